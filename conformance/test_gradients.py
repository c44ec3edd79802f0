"""Conformance of the backward pass (spec section :mod:`attnspec.gradients`)."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.grad_family_probes import (
    check_block_sparse_backward,
    check_linear_backward,
    check_retention_backward,
)
from attnspec.conformance.grad_probes import check_backward, check_hidden_gradients
from attnspec.conformance.linear_cases import LinearCase, forms, linear_cases
from attnspec.conformance.retention_cases import RetentionCase, retention_cases
from attnspec.conformance.sparse_cases import EDGES, EMPTY_ROWS, sparse_cases
from attnspec.conformance.strategies import declares, sdpa_cases
from attnspec.reference import linear


@pytest.mark.clause("sdpa.grad")
@given(case=sdpa_cases(extras=True))
@example(case=SdpaCase(n_q=1, n_k=1, d_qk=1, d_v=1))
@example(case=SdpaCase(n_q=5, n_k=9, d_qk=16, d_v=8))  # cross-attention, D_v != D_qk
@example(case=SdpaCase(n_q=3, n_k=65, d_qk=40, d_v=24, magnitude="large"))
def test_gradients(check, dtype, case):
    """dq, dk and dv of sum(out * dout) against the float64 reference, with every declared option."""
    check_backward(check, case, dtype)


@pytest.mark.clause("sdpa.grad", "sdpa.causal.bottom_right")
@given(case=sdpa_cases(causal="bottom_right", extras=True))
@example(case=SdpaCase(n_q=7, n_k=4, causal="bottom_right"))  # the first rows see no key
def test_gradients_causal_bottom_right(check, dtype, case):
    check_backward(check, case, dtype)


@pytest.mark.clause("sdpa.grad", "sdpa.causal.top_left")
@given(case=sdpa_cases(causal="top_left", extras=True))
@example(case=SdpaCase(n_q=4, n_k=9, causal="top_left"))
def test_gradients_causal_top_left(check, dtype, case):
    check_backward(check, case, dtype)


@pytest.mark.clause("sdpa.grad", "sdpa.window")
@given(case=sdpa_cases(window=True, extras=True))
def test_gradients_window(check, dtype, case):
    check_backward(check, case, dtype)


@pytest.mark.clause("sdpa.grad.hidden", "sdpa.causal.top_left")
@given(case=sdpa_cases(causal="top_left", extras=True))
@example(case=SdpaCase(n_q=3, n_k=8, causal="top_left"))  # keys 3..7: seen by no query
def test_causally_hidden_keys_get_zero_gradient(check, dtype, case):
    """dk and dv are exactly 0 at keys after every query's causal bound."""
    check_hidden_gradients(check, case, dtype)


@pytest.mark.clause("sdpa.grad.hidden", "sdpa.mask")
@given(case=sdpa_cases(mask=True))
@example(case=SdpaCase(n_q=3, n_k=6, mask="per_key", mask_density=0.3, seed=1))
@example(case=SdpaCase(n_q=3, n_k=4, mask="full", mask_density=0.0))
def test_masked_positions_get_zero_gradient(check, dtype, case):
    """Masked keys get no gradient; a row without keys contributes nothing and gets dq = 0."""
    check_hidden_gradients(check, case, dtype)


@pytest.mark.clause("sdpa.grad.hidden", "sdpa.padding")
@given(case=sdpa_cases(padding=True, extras=True))
@example(case=SdpaCase(batch=2, n_q=3, n_k=5, q_lens=(3, 0), kv_lens=(2, 5)))
def test_padding_gets_zero_gradient_and_is_never_read(check, dtype, case):
    """NaN stored past q_lens and kv_lens (in q, k, v and dout) leaves every gradient finite and
    unchanged; the gradients there are exactly 0."""
    check_hidden_gradients(check, case, dtype)


@pytest.mark.clause("sdpa.grad.gqa", "sdpa.gqa")
@given(case=sdpa_cases(gqa=True, extras=True))
@example(case=SdpaCase(h_q=6, h_kv=2, n_q=3, n_k=5))
@example(case=SdpaCase(h_q=4, h_kv=1, n_q=2, n_k=3, causal="bottom_right"))
def test_gqa_gradients_sum_over_the_group(check, dtype, case):
    """dk and dv of a KV head are the sums over its query heads."""
    check_backward(check, case.with_(h_kv=case.h_kv if case.h_kv < case.h_q else 1), dtype)


@pytest.mark.clause("sdpa.grad.scale", "sdpa.scale")
@given(case=sdpa_cases(scale=True))
@example(case=SdpaCase(n_q=3, n_k=5, d_qk=16, d_v=4, scale=0.3))
@example(case=SdpaCase(n_q=3, n_k=5, d_qk=16, d_v=4, scale=1.7))
def test_scale_in_dq_and_dk(check, dtype, case):
    check_backward(check, case, dtype)


@pytest.mark.clause("sdpa.grad.softcap", "sdpa.softcap")
@given(case=sdpa_cases(softcap=True, extras=True))
@example(case=SdpaCase(n_q=3, n_k=8, softcap=0.5, magnitude="large"))
@example(case=SdpaCase(n_q=3, n_k=8, softcap=5.0))
def test_softcap_derivative(check, dtype, case):
    """dR = dS (1 - tanh(R / c)^2), taken at the raw score."""
    check_backward(check, case, dtype)


@pytest.mark.clause("sdpa.grad.bias", "sdpa.bias")
@given(case=sdpa_cases(bias=True, extras=True))
@example(case=SdpaCase(batch=2, h_q=2, h_kv=2, n_q=3, n_k=4, bias="per_key"))  # summed over heads and rows
@example(case=SdpaCase(n_q=3, n_k=4, bias="full", bias_neg_inf=True))
def test_bias_gradient(check, dtype, case):
    """dbias = dS summed over the broadcast axes, in the bias's shape, exactly 0 at -inf entries."""
    check_backward(check, case, dtype)
    if case.bias_neg_inf:
        check_hidden_gradients(check, case, dtype)


def _declared_form(case: LinearCase, data) -> tuple[str, int | None]:
    """A form the backend declares (drawn), or for a pinned example the chunked form's chunks of 3."""
    if data is None:
        return ("chunked", 3) if declares("linear.chunked") else ("parallel", None)
    return data.draw(forms(case.n_k).filter(lambda f: declares(f"linear.{f[0]}")), label="form")


@pytest.mark.clause("linear.grad")
@given(case=linear_cases(max_len=48), data=st.data())
@example(case=LinearCase(n_q=5, n_k=5, causal=True, initial_state=True, initial_normalizer=True), data=None)
@example(case=LinearCase(n_q=3, n_k=9, d_qk=4, d_v=2, feature_map="identity", normalize=False, scale=3.0), data=None)
def test_linear_gradients(check, dtype, case, data):
    """dq, dk, dv (and dS0, dz0) of every feature map, causal or not, normalised with eps or not."""
    check_linear_backward(check, case, dtype, *_declared_form(case, data))


@pytest.mark.clause("linear.grad", "linear.normalizer")
@given(case=linear_cases(feature_maps=("relu",), normalize=True, dead=True, max_len=32), data=st.data())
@example(case=LinearCase(n_q=7, n_k=7, d_qk=2, d_v=3, feature_map="relu", causal=True, dead=True), data=None)
def test_linear_rows_without_denominator_get_zero_gradient(check, dtype, case, data):
    """A row whose den + eps is 0 (relu, no positive feature) has out = 0: its dq is exactly 0, never NaN."""
    got = check_linear_backward(check, case, dtype, *_declared_form(case, data))
    q, k, v, state = case.inputs(dtype)
    dead = linear.parts(q, k, v, **case.options(), **state).den + case.eps == 0
    zeros = np.zeros((int(dead.sum()), case.d_qk))
    check.exact(np.asarray(got[0], np.float64)[dead], zeros, what="dq of rows whose den + eps is 0", case=case)


@pytest.mark.clause("retention.grad")
@given(case=st.booleans().flatmap(lambda state: retention_cases(form=None, initial_state=state, max_len=48)))
@example(case=RetentionCase(heads=3, n=6, d_k=3, d_v=2, gammas=(0.0, 1.0, 0.5), initial_state=True))
@example(case=RetentionCase(n=7, gammas=(0.96875,), form="chunkwise", chunk_size=3, scale=1.7))
def test_retention_gradients(check, dtype, case):
    """dq, dk, dv (and dS0) of every form, decays 0 and 1 included; the decays get no gradient."""
    check_retention_backward(check, case, dtype)


@pytest.mark.clause("sparse.block_sparse.grad", "sparse.block_sparse")
@given(case=sparse_cases("block_sparse", max_len=48))
@example(case=EMPTY_ROWS)
@example(case=EDGES["block_sparse"][2])  # decoding rows (N_q < N_k), a sparse layout
def test_block_sparse_gradients(check, dtype, case):
    """dense sdpa.grad with the layout's mask; masked blocks and rows without keys get exactly 0."""
    check_block_sparse_backward(check, case, dtype)
