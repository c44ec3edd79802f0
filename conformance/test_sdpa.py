"""Conformance of the core operation and its score modifiers (spec section :mod:`attnspec.sdpa`)."""

import numpy as np
import pytest
from hypothesis import example, given

from attnspec import reference
from attnspec.conformance.calls import call_sdpa
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.probes import check_arrays, check_fully_masked_rows, check_sdpa
from attnspec.conformance.strategies import declares, sdpa_cases
from attnspec.conformance.target import current
from attnspec.conformance.tolerance import sdpa_bounds


@pytest.mark.clause("sdpa")
@given(case=sdpa_cases())
@example(case=SdpaCase(n_q=1, n_k=1, d_qk=1, d_v=1))
@example(case=SdpaCase(n_q=3, n_k=65, d_qk=111, d_v=40))  # a partial last key tile, odd head dims
@example(case=SdpaCase(n_q=129, n_k=2, d_qk=3, d_v=3, magnitude="large"))  # scores past exp's overflow
@example(case=SdpaCase(n_q=1, n_k=128, d_qk=1, d_v=1, magnitude="large"))
def test_sdpa(check, dtype, case):
    """Numerical equivalence with the reference: cross-attention, D_v != D_qk, large magnitudes."""
    check_sdpa(check, case, dtype)


#: ``--shapes=gpu`` only (the default on CUDA): 16k tokens, where a GPU kernel runs hundreds of key tiles per row and
#: its skipped blocks (causal, window, lengths) are most of the work. One head keeps the float64
#: reference's score matrix at 2 GiB.
GPU_CASES = [
    SdpaCase(n_q=2048, n_k=16384, d_qk=64, d_v=64),
    SdpaCase(n_q=16384, n_k=16384, d_qk=128, d_v=128, causal="top_left"),
    SdpaCase(n_q=4000, n_k=16384, d_qk=128, d_v=128, causal="bottom_right", window=(2048, 0), kv_lens=(16000,)),
]


@pytest.mark.clause("sdpa", "sdpa.causal.top_left", "sdpa.causal.bottom_right", "sdpa.window", "sdpa.padding")
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"Nq{c.n_q}-Nk{c.n_k}-D{c.d_qk}-{c.causal or 'full'}")
def test_long_sequences(check, dtype, case):
    """16k-token sequences: every key tile of a long row, the causal and window skips, a length cut."""
    if current().shapes != "gpu":
        pytest.skip("16k-token cases run in the GPU shape tier only (--shapes=gpu, the default on CUDA)")
    needs = {f"sdpa.causal.{case.causal}": case.causal, "sdpa.window": case.window, "sdpa.padding": case.kv_lens}
    for clause in [c for c, used in needs.items() if used and not declares(c)]:
        pytest.skip(f"{current().backend.name} does not declare {clause}")
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.scale")
@given(case=sdpa_cases(scale=True))
@example(case=SdpaCase(n_q=2, n_k=5, d_qk=16, d_v=3, scale=0.3))
@example(case=SdpaCase(n_q=2, n_k=5, d_qk=16, d_v=3, scale=None))
def test_scale(check, dtype, case):
    """An explicit scale is used as given; the default is 1/sqrt(D_qk), never 1/sqrt(D_v) or 1/D."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa")
@given(case=sdpa_cases(extras=True, magnitudes=("huge",)))
@example(case=SdpaCase(n_q=3, n_k=70, d_qk=16, d_v=8, magnitude="huge"))  # options come from extras, as declared
def test_huge_scores(check, dtype, case):
    """Scores of about +-2.5e5 in every row (massive activations, no QK-norm; conformance.dtypes.HUGE_SCORE):
    only the row-maximum subtraction and masking with a true -inf survive them."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.mask")
@given(case=sdpa_cases(mask=True, magnitudes=("huge",)))
@example(case=SdpaCase(n_q=2, n_k=9, magnitude="huge", mask="full", seed=3))
def test_mask_at_huge_scores(check, dtype, case):
    """A finite stand-in for -inf (-1e4, -1e6) is no mask where the visible scores are -2.5e5."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.lse")
@given(case=sdpa_cases(extras=True))
@example(case=SdpaCase(n_q=4, n_k=7, d_qk=8, d_v=8))
def test_lse(check, dtype, case):
    """The LSE is the natural log of the softmax denominator, -inf for rows without keys."""
    check_sdpa(check, case, dtype, lse=True)


@pytest.mark.clause("sdpa.fully_masked", "sdpa.mask")
@given(case=sdpa_cases(mask=True))
@example(case=SdpaCase(n_q=3, n_k=4, mask="full", mask_density=0.0))
def test_fully_masked_by_mask(check, dtype, case):
    """A row whose mask is all False outputs exactly 0 and has LSE -inf, never NaN."""
    check_fully_masked_rows(check, case, dtype)


@pytest.mark.clause("sdpa.fully_masked", "sdpa.causal.bottom_right")
@given(case=sdpa_cases(causal="bottom_right"))
@example(case=SdpaCase(n_q=5, n_k=2, causal="bottom_right"))
def test_fully_masked_by_causal_offset(check, dtype, case):
    """Bottom-right causal with N_q > N_k: the first N_q - N_k rows see no key."""
    check_fully_masked_rows(check, case, dtype)


@pytest.mark.clause("sdpa.fully_masked", "sdpa.padding")
@given(case=sdpa_cases(padding=True))
@example(case=SdpaCase(batch=2, n_q=3, n_k=4, q_lens=(3, 0), kv_lens=(0, 4)))
def test_fully_masked_by_padding(check, dtype, case):
    """Padded query rows and zero-length key sequences give zero rows with LSE -inf."""
    check_fully_masked_rows(check, case, dtype)


@pytest.mark.clause("sdpa.gqa")
@given(case=sdpa_cases(gqa=True, extras=True))
@example(case=SdpaCase(h_q=6, h_kv=2, n_q=3, n_k=5, d_qk=8, d_v=8))
def test_gqa(check, dtype, case):
    """Query head h reads KV head h // (H_q / H_kv)."""
    check_sdpa(check, case.with_(h_kv=case.h_kv if case.h_kv < case.h_q else 1), dtype)


@pytest.mark.clause("sdpa.gqa")
@given(case=sdpa_cases(gqa=True))
def test_gqa_equals_repeated_kv(check, dtype, case):
    """GQA equals multi-head attention with K and V repeated along the head axis."""
    q, k, v, options = case.inputs(dtype)
    group = case.h_q // case.h_kv
    mha_case = case.with_(h_kv=case.h_q)
    check_arrays(check, case, dtype, q, k, v, options)  # both against the same reference values
    check_arrays(check, mha_case, dtype, q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1), options)


@pytest.mark.clause("sdpa.mask")
@given(case=sdpa_cases(mask=True, extras=True))
def test_mask(check, dtype, case):
    """A boolean mask, broadcast from (B, H_q, N_q, N_k), (B, 1, 1, N_k) or (1, H_q, N_q, N_k)."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.bias")
@given(case=sdpa_cases(bias=True))
@example(case=SdpaCase(n_q=3, n_k=4, bias="full", bias_neg_inf=True))
def test_bias(check, dtype, case):
    """An additive bias, broadcastable, with -inf entries excluding keys."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.bias")
@given(case=sdpa_cases(bias=True))
def test_bias_row_shift(check, dtype, case):
    """Adding a per-row constant to the bias leaves the output unchanged and shifts the LSE."""
    q, k, v, options = case.inputs(dtype)
    rng = np.random.default_rng(case.seed + 1)
    shift = rng.integers(-4, 5, size=(case.batch, case.h_q, case.n_q, 1)).astype(options["bias"].dtype)
    shifted = dict(options, bias=(options["bias"] + shift).astype(options["bias"].dtype))
    with_lse = declares("sdpa.lse")
    out, lse = call_sdpa(q, k, v, shifted, return_lse=with_lse)
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, **options)  # the unshifted problem
    out_bound, _ = sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse)
    check.close(out, ref_out, out_bound, what="out with a row-shifted bias", case=case)
    if with_lse:
        shifted_lse = np.where(np.isneginf(ref_lse), -np.inf, ref_lse + shift[..., 0].astype(np.float64))
        _, lse_bound = sdpa_bounds(q, k, v, shifted, dtype, ref_out, shifted_lse)
        check.close(lse, shifted_lse, lse_bound, what="lse with a row-shifted bias", case=case)


@pytest.mark.clause("sdpa.softcap")
@given(case=sdpa_cases(softcap=True))
@example(case=SdpaCase(n_q=3, n_k=8, d_qk=8, d_v=8, softcap=0.5, magnitude="large"))
def test_softcap(check, dtype, case):
    """Scores are capped as cap * tanh(s / cap)."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.softcap", "sdpa.mask")
@given(case=sdpa_cases(softcap=True, mask=True))
@example(case=SdpaCase(n_q=2, n_k=9, d_qk=8, d_v=8, softcap=0.5, mask="per_key", mask_density=0.2))
def test_softcap_before_mask(check, dtype, case):
    """The cap applies before masking: masked keys keep zero weight (capping -inf gives -cap)."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.softcap", "sdpa.bias")
@given(case=sdpa_cases(softcap=True, bias=True))
@example(case=SdpaCase(n_q=2, n_k=9, d_qk=8, d_v=8, softcap=0.5, bias="full"))
@example(case=SdpaCase(n_q=6, n_k=9, d_qk=8, d_v=8, softcap=0.5, bias="full", causal="bottom_right", window=(4, 0)))
def test_softcap_before_bias(check, dtype, case):
    """The cap bounds scale * q.k only; the bias is added after it."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.alibi")
@given(case=sdpa_cases(alibi=True, extras=True))
@example(case=SdpaCase(h_q=3, h_kv=3, n_q=3, n_k=9, alibi=True))
def test_alibi(check, dtype, case):
    """ALiBi: -slope * |i + N_k - N_q - j|, bottom-right aligned, after the softcap."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa")
def test_output_shape_and_dtype(check, dtype):
    """The output is (B, H_q, N_q, D_v) in the input dtype."""
    case = SdpaCase(batch=2, h_q=3, h_kv=3, n_q=5, n_k=7, d_qk=8, d_v=3)
    q, k, v, options = case.inputs(dtype)
    out, _ = call_sdpa(q, k, v, options, return_lse=False)
    check.same_shape(out, np.empty((2, 3, 5, 3)), what="out", case=case)
    check.exact(np.asarray(str(out.dtype)), np.asarray(str(q.dtype)), what="out dtype", case=case)
