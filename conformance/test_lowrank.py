"""Conformance of Linformer and Transformer-XL memory attention (spec section :mod:`attnspec.lowrank`)."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attnspec import reference
from attnspec.conformance.bounds import linformer_bound
from attnspec.conformance.calls import call, call_unguarded
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.dtypes import LARGE_MAGNITUDE, numpy_dtype, rounded
from attnspec.conformance.memory import check_linear_memory
from attnspec.conformance.probes import within_limits
from attnspec.conformance.strategies import sdpa_cases
from attnspec.conformance.target import current, decline
from attnspec.conformance.tolerance import sdpa_bounds
from attnspec.reference import lowrank

K_PROJ = (1, 2, 7, 16, 64)
#: Sequence lengths stay at most 64 (plus up to 64 memory tokens) to keep three float64 passes fast.
MAX_LEN = 64


def projections(case: SdpaCase, dtype: str, k_proj: int, per_head: bool):
    """Random ``E`` and ``F`` with entries of variance ``1 / N``, so that projected keys stay O(1)."""
    rng = np.random.default_rng(case.seed + 1)
    shape = (case.h_kv, k_proj, case.n_k) if per_head else (k_proj, case.n_k)
    return tuple(rounded(rng.standard_normal(shape) / np.sqrt(case.n_k), dtype) for _ in range(2))


@st.composite
def linformer_inputs(draw):
    case = draw(sdpa_cases(scale=True, max_len=MAX_LEN))
    k_proj = draw(st.one_of(st.sampled_from(K_PROJ), st.integers(1, case.n_k + 3)))
    return case, k_proj, draw(st.booleans())


@pytest.mark.clause("linformer")
@given(inputs=linformer_inputs())
@example(inputs=(SdpaCase(h_q=4, h_kv=2, n_q=9, n_k=33, d_qk=8, d_v=4, seed=1), 7, True))
def test_linformer(check, dtype, inputs):
    """E projects the keys and F the values, shared or per key/value head, for every k_proj."""
    case, k_proj, per_head = inputs
    q, k, v, options = case.inputs(dtype)
    within_limits(case)
    e, f = projections(case, dtype, k_proj, per_head)
    out = call("linformer", q, k, v, e=e, f=f, **options)
    ref_out = lowrank.linformer(q, k, v, e=e, f=f, **options)
    bound = linformer_bound(q, k, v, dict(e=e, f=f, **options), dtype, ref_out)
    check.close(out, ref_out, bound, what="out", case=(case, dict(k_proj=k_proj, per_head=per_head)))


@pytest.mark.clause("linformer")
@given(case=sdpa_cases(scale=True, max_len=MAX_LEN), permute=st.booleans())
@example(case=SdpaCase(n_q=3, n_k=17, seed=2), permute=True)
def test_linformer_with_identity_or_permutation_is_sdpa(check, dtype, case, permute):
    """With E = F = I (or one permutation matrix for both), Linformer is attention without a mask."""
    q, k, v, options = case.inputs(dtype)
    within_limits(case)
    order = np.random.default_rng(case.seed).permutation(case.n_k) if permute else np.arange(case.n_k)
    p = np.eye(case.n_k, dtype=numpy_dtype(dtype))[order]
    out = call("linformer", q, k, v, e=p, f=p, **options)
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, **options)
    bound, _ = sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse)
    check.close(
        out,
        ref_out,
        bound,
        what="out with E = F = " + ("a permutation" if permute else "I"),
        case=(case, dict(permute=permute)),
    )


@pytest.mark.clause("linformer")
@pytest.mark.parametrize("option", ["causal_top_left", "causal_bottom_right", "mask"])
def test_linformer_rejects_visibility_options(check, dtype, option):
    """Projected keys mix every position: a causal mask or a mask has no meaning and is an error."""
    case = SdpaCase(n_q=6, n_k=6, d_qk=4, d_v=4)
    q, k, v, _ = case.inputs(dtype)
    e, f = projections(case, dtype, 3, per_head=False)
    extra = {
        "causal_top_left": {"causal": "top_left"},
        "causal_bottom_right": {"causal": "bottom_right"},
        "mask": {"mask": np.tril(np.ones((6, 6), dtype=bool))},
    }[option]
    check.rejects(
        lambda: call_unguarded("linformer", q, k, v, e=e, f=f, **extra), what=f"linformer with {option}", case=case
    )


@pytest.mark.clause("linformer.cost")
def test_linformer_memory_is_linear(check, dtype):
    """Peak memory grows linearly in N for k_proj = 32: x4 in N must stay under x8."""

    def build(n):
        case = SdpaCase(n_q=n, n_k=n, d_qk=16, d_v=16)
        q, k, v, _ = case.inputs(dtype)
        e, f = projections(case, dtype, 32, per_head=False)
        return (q, k, v), dict(e=e, f=f), case

    check_linear_memory(check, "linformer", build)


def _memory(case: SdpaCase, dtype: str, mem_len: int):
    """``mem_k`` and ``mem_v`` of ``mem_len`` tokens, at the case's magnitude."""
    rng = np.random.default_rng(case.seed + 2)
    mag = LARGE_MAGNITUDE[dtype] if case.magnitude == "large" else 1.0
    mem_k = rounded(rng.standard_normal((case.batch, case.h_kv, mem_len, case.d_qk)) * mag, dtype)
    mem_v = rounded(rng.standard_normal((case.batch, case.h_kv, mem_len, case.d_v)), dtype)
    return mem_k, mem_v


def check_weights_pattern(check, case: SdpaCase, dtype: str, visible: np.ndarray, run, *, what: str, shown):
    """Zero queries and one-hot values: the keys that carry weight must be exactly the visible ones.

    ``run(values)`` calls the backend with ``values`` ``(B, H_kv, N_keys, width)`` one-hot over a
    range of keys; with equal scores every visible key gets ``1 / |V(i)| > 0``, every other 0.
    ``shown`` is what a failure prints as the case.
    """
    n_keys = visible.shape[-1]
    width = max(1, min(n_keys, current().backend.max_head_dim or n_keys))
    weights = []
    for start in range(0, n_keys, width):
        keys = np.arange(start, min(start + width, n_keys))
        one_hot = np.zeros((n_keys, width), dtype=numpy_dtype(dtype))
        one_hot[keys, keys - start] = 1
        out = run(np.broadcast_to(one_hot, (case.batch, case.h_kv, n_keys, width)).copy())
        weights.append(np.asarray(out, np.float64)[..., : len(keys)])
    expected = np.broadcast_to(visible, (case.batch, case.h_q) + visible.shape)
    check.pattern(np.concatenate(weights, axis=-1) != 0, expected, what=what, case=shown)


@st.composite
def xl_memory_inputs(draw):
    case = draw(sdpa_cases(scale=True, max_len=MAX_LEN))
    return case.with_(n_q=case.n_k), draw(st.sampled_from([0, 1, 2, 7, 33, 64]))


@pytest.mark.clause("xl.memory")
@given(inputs=xl_memory_inputs())
@example(inputs=(SdpaCase(h_q=2, h_kv=1, n_q=5, n_k=5, seed=3), 7))
@example(inputs=(SdpaCase(n_q=9, n_k=9, seed=4), 0))
def test_xl_memory(check, dtype, inputs):
    """Segment token i sees every memory token and segment tokens 0 .. i (bottom-right over [mem; seg])."""
    case, mem_len = inputs
    _within_limits(case, case.n_k + mem_len)
    q, k, v, options = case.inputs(dtype)
    mem_k, mem_v = _memory(case, dtype, mem_len)
    out = call("xl_attention", q, k, v, mem_k=mem_k, mem_v=mem_v, **options)
    keys, values = np.concatenate([mem_k, k], axis=2), np.concatenate([mem_v, v], axis=2)
    as_sdpa = {**options, "causal": "bottom_right"}
    ref_out, ref_lse = reference.sdpa(q, keys, values, return_lse=True, **as_sdpa)
    bound, _ = sdpa_bounds(q, keys, values, as_sdpa, dtype, ref_out, ref_lse)
    check.close(out, ref_out, bound, what="out", case=(case, dict(mem_len=mem_len)))


@pytest.mark.clause("xl.memory")
@given(inputs=xl_memory_inputs())
@example(inputs=(SdpaCase(n_q=4, n_k=4, seed=5), 2))
def test_xl_memory_pattern(check, dtype, inputs):
    case, mem_len = inputs
    _within_limits(case, case.n_k + mem_len)
    q, k, _, options = case.inputs(dtype)
    mem_k, _ = _memory(case, dtype, mem_len)
    i, j = np.arange(case.n_q)[:, None], np.arange(mem_len + case.n_k)[None, :]
    check_weights_pattern(
        check,
        case,
        dtype,
        j <= i + mem_len,
        lambda values: call(
            "xl_attention",
            np.zeros_like(q),
            k,
            values[:, :, mem_len:],
            mem_k=mem_k,
            mem_v=values[:, :, :mem_len],
            **options,
        ),
        what="weights over [memory; segment] read through one-hot values",
        shown=(case, dict(mem_len=mem_len)),
    )


@st.composite
def xl_recurrence_inputs(draw):
    case = draw(sdpa_cases(scale=True, max_len=MAX_LEN))
    n = case.n_k
    segment_len = draw(st.sampled_from(sorted({1, 2, 3, 5, 16, max(1, n - 1), n, n + 1})))
    mem_len = draw(
        st.sampled_from(sorted({0, 1, 2, segment_len - 1, segment_len, segment_len + 1, 2 * segment_len + 3, 64}))
    )
    return case.with_(n_q=n), segment_len, mem_len


@pytest.mark.clause("xl.recurrence")
@given(inputs=xl_recurrence_inputs())
@example(inputs=(SdpaCase(n_q=17, n_k=17, seed=6), 5, 0))
@example(inputs=(SdpaCase(h_q=3, h_kv=1, n_q=23, n_k=23, seed=7), 4, 9))
def test_xl_recurrence(check, dtype, inputs):
    """Segment by segment with the memory kept to mem_len equals one pass with the band
    L floor(i / L) - M <= j <= i, also for segments that do not divide N and memories longer than a segment."""
    case, segment_len, mem_len = inputs
    within_limits(case)
    q, k, v, options = case.inputs(dtype)
    out = call("xl_recurrent", q, k, v, segment_len=segment_len, mem_len=mem_len, **options)
    as_sdpa = {**options, "mask": lowrank.xl_band(case.n_k, segment_len, mem_len)}
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, **as_sdpa)
    bound, _ = sdpa_bounds(q, k, v, as_sdpa, dtype, ref_out, ref_lse)
    check.close(out, ref_out, bound, what="out", case=(case, dict(segment_len=segment_len, mem_len=mem_len)))


@pytest.mark.clause("xl.recurrence")
@given(inputs=xl_recurrence_inputs())
@example(inputs=(SdpaCase(n_q=10, n_k=10, seed=8), 3, 2))
def test_xl_recurrence_pattern(check, dtype, inputs):
    case, segment_len, mem_len = inputs
    within_limits(case)
    q, k, _, options = case.inputs(dtype)
    check_weights_pattern(
        check,
        case,
        dtype,
        lowrank.xl_band(case.n_k, segment_len, mem_len),
        lambda values: call(
            "xl_recurrent", np.zeros_like(q), k, values, segment_len=segment_len, mem_len=mem_len, **options
        ),
        what="weights read through one-hot values",
        shown=(case, dict(segment_len=segment_len, mem_len=mem_len)),
    )


def _within_limits(case: SdpaCase, n_keys: int) -> None:
    within_limits(case)
    limit = current().backend.max_seq_len
    if limit is not None and n_keys > limit:
        decline(f"M + N = {n_keys} keys is beyond the declared max_seq_len {limit}")
