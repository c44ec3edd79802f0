"""Conformance of the backward pass (spec section :mod:`attnspec.gradients`)."""

import pytest
from hypothesis import example, given

from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.grad_probes import check_backward, check_hidden_gradients
from attnspec.conformance.strategies import sdpa_cases


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
