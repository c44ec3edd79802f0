"""The oracle checked against a second, scalar transcription of the spec text.

The reference is vectorised; here every (b, h, i, j) is evaluated with plain Python loops and
``math``, straight from the clause texts, on small random cases covering every option.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnspec import reference


def scalar_sdpa(
    q,
    k,
    v,
    *,
    scale=None,
    causal=None,
    window=None,
    mask=None,
    bias=None,
    softcap=None,
    alibi_slopes=None,
    q_lens=None,
    kv_lens=None,
):
    b_n, h_q, n_q, d = q.shape
    h_kv, n_k, d_v = k.shape[1], k.shape[2], v.shape[3]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out, lse = np.zeros((b_n, h_q, n_q, d_v)), np.full((b_n, h_q, n_q), -math.inf)
    for b in range(b_n):
        nq_b = n_q if q_lens is None else int(q_lens[b])
        nk_b = n_k if kv_lens is None else int(kv_lens[b])
        offset = nk_b - nq_b
        for h in range(h_q):
            g = h // (h_q // h_kv)
            for i in range(n_q):
                scores = {}
                for j in range(n_k):
                    visible = i < nq_b and j < nk_b
                    visible &= causal != "top_left" or j <= i
                    visible &= causal != "bottom_right" or j <= i + offset
                    if window is not None:
                        visible &= window[0] < 0 or j >= i + offset - window[0]
                        visible &= window[1] < 0 or j <= i + offset + window[1]
                    if mask is not None:
                        visible &= bool(np.broadcast_to(mask, (b_n, h_q, n_q, n_k))[b, h, i, j])
                    if not visible:
                        continue
                    s = scale * sum(q[b, h, i, c] * k[b, g, j, c] for c in range(d))
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    if bias is not None:
                        s += np.broadcast_to(bias, (b_n, h_q, n_q, n_k))[b, h, i, j]
                    if alibi_slopes is not None:
                        s -= np.broadcast_to(alibi_slopes, (b_n, h_q))[b, h] * abs(i + offset - j)
                    scores[j] = s
                finite = [s for s in scores.values() if s > -math.inf]
                if not finite:
                    continue
                top = max(finite)
                total = sum(math.exp(s - top) for s in finite)
                lse[b, h, i] = top + math.log(total)
                for j, s in scores.items():
                    out[b, h, i] += math.exp(s - lse[b, h, i]) * v[b, g, j]
    return out, lse


@st.composite
def small_cases(draw):
    h_kv, group = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3]))
    b, n_q, n_k = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d, d_v = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((b, h_kv * group, n_q, d)) * draw(st.sampled_from([1.0, 20.0]))
    k, v = rng.standard_normal((b, h_kv, n_k, d)), rng.standard_normal((b, h_kv, n_k, d_v))
    options = {}
    maybe = lambda: draw(st.booleans())  # noqa: E731
    if maybe():
        options["scale"] = draw(st.sampled_from([0.3, 2.0]))
    if maybe():
        options["causal"] = draw(st.sampled_from(["top_left", "bottom_right"]))
    if maybe():
        options["window"] = (draw(st.integers(-1, 3)), draw(st.integers(-1, 3)))
    if maybe():
        options["mask"] = rng.random((b, 1, n_q, n_k)) < 0.7
    if maybe():
        options["bias"] = np.where(
            rng.random((1, h_kv * group, n_q, n_k)) < 0.2, -np.inf, rng.standard_normal((1, h_kv * group, n_q, n_k))
        )
    if maybe():
        options["softcap"] = draw(st.sampled_from([0.5, 5.0]))
    if maybe():
        options["alibi_slopes"] = rng.uniform(0.01, 1, size=h_kv * group)
    if maybe():
        options["q_lens"] = rng.integers(0, n_q + 1, size=b)
        options["kv_lens"] = rng.integers(0, n_k + 1, size=b)
    return q, k, v, options


@settings(max_examples=150, deadline=None)
@given(small_cases())
def test_reference_matches_the_scalar_transcription(case):
    q, k, v, options = case
    out, lse = reference.sdpa(q, k, v, return_lse=True, **options)
    want_out, want_lse = scalar_sdpa(q, k, v, **options)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)
    assert np.all(out[np.isneginf(lse)] == 0)


@settings(max_examples=60, deadline=None)
@given(small_cases(), st.integers(1, 7), st.integers(1, 7), st.integers(1, 8))
def test_tiled_split_and_direct_agree(case, block_q, block_k, splits):
    q, k, v, options = case
    out, lse = reference.sdpa(q, k, v, return_lse=True, **options)
    for other in (
        reference.flash_forward(q, k, v, block_q=block_q, block_k=block_k, **options),
        reference.split_kv(q, k, v, num_splits=splits, **options),
    ):
        np.testing.assert_allclose(other[0], out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other[1], lse, rtol=1e-12, atol=1e-12)


def test_tiles_outside_the_window_are_skipped():
    q = k = v = np.ones((1, 1, 256, 4))
    stats = {}
    reference.flash_forward(q, k, v, block_q=16, block_k=16, window=(15, 0), stats=stats)
    assert stats == {"tiles_visited": 31, "tiles_skipped": 256 - 31}


def test_kv_cache_decoding_step_by_step():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 4, 9, 3)) for _ in range(3))
    cache = reference.KVCache(batch=2, kv_heads=2, capacity=12, d_qk=3, d_v=3)
    full = reference.sdpa(q, k[:, :2], v[:, :2], causal="bottom_right")
    for t in range(9):
        cache.append(k[:, :2, t : t + 1], v[:, :2, t : t + 1])
        out, _ = cache.attend(q[:, :, t : t + 1], num_splits=2)
        np.testing.assert_allclose(out[:, :, 0], full[:, :, t], rtol=1e-12, atol=1e-12)


def test_invisible_nan_does_not_leak_but_visible_nan_does():
    q, k, v = np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2))
    v[0, 0, 2] = np.nan
    out = reference.sdpa(q, k, v, kv_lens=np.array([2]))
    assert np.isfinite(out).all()
    assert np.isnan(reference.sdpa(q, k, v)).all()


def test_head_dims_of_zero_as_the_clause_defines_them():
    """``D_qk = 0`` is an error naming it; ``D_v = 0`` gives no output columns and the usual LSE."""
    with pytest.raises(ValueError, match="D_qk"):
        reference.sdpa(np.zeros((1, 1, 2, 0)), np.zeros((1, 1, 3, 0)), np.zeros((1, 1, 3, 4)))
    out, lse = reference.sdpa(np.zeros((1, 1, 2, 4)), np.zeros((1, 1, 3, 4)), np.zeros((1, 1, 3, 0)), return_lse=True)
    assert out.shape == (1, 1, 2, 0)
    np.testing.assert_allclose(lse, np.log(3.0))
