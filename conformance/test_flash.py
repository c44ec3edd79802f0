"""Conformance of the flash algorithm (spec section :mod:`attnspec.flash`)."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attnspec import reference
from attnspec.conformance.calls import call
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.memory import check_linear_memory
from attnspec.conformance.probes import check_sdpa
from attnspec.conformance.strategies import block_sizes, declares, sdpa_cases
from attnspec.conformance.target import current
from attnspec.conformance.tolerance import sdpa_bounds


@pytest.mark.clause("flash.tiled")
@given(case=sdpa_cases(extras=True), data=st.data())
@example(case=SdpaCase(n_q=65, n_k=129, causal="bottom_right"), data=None)
def test_tiled_equals_direct(check, dtype, case, data):
    """Every tiling, including tiles that do not divide the lengths, gives sdpa's result."""
    block_q = data.draw(block_sizes(case.n_q), label="block_q") if data else 64
    block_k = data.draw(block_sizes(case.n_k), label="block_k") if data else 64
    check_sdpa(check, case, dtype, op="flash_forward", lse=True, block_q=block_q, block_k=block_k)


@pytest.mark.clause("flash.memory")
@pytest.mark.parametrize(
    "options", [{}, {"causal": "bottom_right"}, {"window": (32, 0)}], ids=["dense", "causal", "window"]
)
def test_tiled_memory_is_linear(check, dtype, options):
    """Peak memory of the tiled pass grows linearly in N: x4 in N must stay well under x16."""
    if (
        "causal" in options
        and not declares("sdpa.causal.bottom_right")
        or "window" in options
        and not declares("sdpa.window")
    ):
        pytest.skip("unsupported: the backend does not declare this option")

    def build(n):
        case = SdpaCase(n_q=n, n_k=n, d_qk=16, d_v=16)
        q, k, v, _ = case.inputs(dtype)
        return (q, k, v), dict(block_q=64, block_k=64, **options), case

    check_linear_memory(check, "flash_forward", build)


@pytest.mark.clause("flash.split_kv")
@given(case=sdpa_cases(extras=True), num_splits=st.sampled_from([1, 2, 3, 7, 64, 200]))
@example(case=SdpaCase(n_q=1, n_k=65), num_splits=2)
def test_split_kv_equals_direct(check, dtype, case, num_splits):
    """Contiguous key splits merged by LSE give sdpa's result, also when splits are empty."""
    check_sdpa(check, case, dtype, op="split_kv", lse=True, num_splits=num_splits)


@pytest.mark.clause("flash.merge")
@given(case=sdpa_cases(extras=True), data=st.data())
def test_merge_partials(check, dtype, case, data):
    """Merging partials over a random partition of the keys gives the result over all keys."""
    q, k, v, options = case.inputs(dtype)
    parts = data.draw(st.integers(1, 4), label="parts")
    owner = np.random.default_rng(case.seed).integers(0, parts, size=case.n_k)
    outs, lses = [], []
    for s in range(parts):  # partial s: attention over the keys it owns (the others masked out)
        only = {**options, "mask": (owner == s)[None, None, None, :] & options.get("mask", True)}
        out_s, lse_s = reference.sdpa(q, k, v, return_lse=True, **only)
        out_s[np.isneginf(lse_s)] = np.nan  # an empty partial's output must be ignored
        outs.append(out_s.astype(q.dtype))
        lses.append(lse_s.astype(np.float32 if dtype != "float64" else np.float64))
    outs, lses = np.stack(outs), np.stack(lses)
    out, lse = call("merge_partials", outs, lses)
    ref_out, ref_lse = reference.merge_partials(outs, lses)
    bound_out, bound_lse = sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse)
    check.close(out, ref_out, bound_out, what="merged out", case=case)
    check.close(lse, ref_lse, bound_lse, what="merged lse", case=case)


@pytest.mark.clause("flash.decode")
@given(
    case=sdpa_cases(extras=True, magnitudes=("unit",)),
    capacity_extra=st.integers(0, 9),
    num_splits=st.sampled_from([1, 3]),
)
def test_decode(check, dtype, case, capacity_extra, num_splits):
    """New queries against a cache of lengths cache_lens; unused capacity holds NaN."""
    case = case.with_(causal=None, q_lens=None, kv_lens=None, mask=None, bias=None)  # both sized to N_k
    capacity_extra = min(capacity_extra, (current().backend.max_seq_len or case.n_k + capacity_extra) - case.n_k)
    q, k, v, options = case.inputs(dtype)
    cache_lens = np.random.default_rng(case.seed).integers(0, case.n_k + 1, size=case.batch).astype(np.int32)
    k_cache, v_cache = _cache(k, capacity_extra), _cache(v, capacity_extra)
    for b, n in enumerate(cache_lens):
        k_cache[b, :, n:], v_cache[b, :, n:] = np.nan, np.nan
    out, lse = call("decode", q, k_cache, v_cache, cache_lens=cache_lens, num_splits=num_splits, **options)
    as_sdpa = {**options, "causal": "bottom_right", "kv_lens": cache_lens}
    ref_out, ref_lse = reference.sdpa(q, k_cache, v_cache, return_lse=True, **as_sdpa)
    bound_out, bound_lse = sdpa_bounds(
        q, np.nan_to_num(k_cache), np.nan_to_num(v_cache), as_sdpa, dtype, ref_out, ref_lse
    )
    check.close(out, ref_out, bound_out, what="decoded out", case=case)
    check.close(lse, ref_lse, bound_lse, what="decoded lse", case=case)


def _cache(x, extra: int) -> np.ndarray:
    pad = np.full(x.shape[:2] + (extra,) + x.shape[3:], np.nan, dtype=x.dtype)
    return np.concatenate([x, pad], axis=2)


@pytest.mark.clause("flash.decode", "sdpa.causal.bottom_right")
@given(case=sdpa_cases(magnitudes=("unit",), max_len=24))
def test_decoding_step_by_step_equals_causal_pass(check, dtype, case):
    """Appending one token at a time and decoding it reproduces the causal pass row by row."""
    case = case.with_(n_q=case.n_k)
    q, k, v, options = case.inputs(dtype)
    capacity = case.n_k + 2
    k_cache, v_cache = _cache(k[:, :, :0], capacity), _cache(v[:, :, :0], capacity)
    rows = []
    for t in range(case.n_k):
        k_cache[:, :, t], v_cache[:, :, t] = k[:, :, t], v[:, :, t]
        lens = np.full(case.batch, t + 1, dtype=np.int32)
        out_t, _ = call("decode", q[:, :, t : t + 1], k_cache, v_cache, cache_lens=lens, **options)
        rows.append(np.asarray(out_t, np.float64))
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, causal="bottom_right", **options)
    bound, _ = sdpa_bounds(q, k, v, {**options, "causal": "bottom_right"}, dtype, ref_out, ref_lse)
    check.close(np.concatenate(rows, axis=2), ref_out, bound, what="step-by-step decoded rows", case=case)
