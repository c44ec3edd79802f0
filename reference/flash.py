"""The flash algorithm in float64 (clauses in :mod:`attnspec.flash`).

Readable rather than fast: Python loops over tiles, vectorised NumPy inside a tile. Outputs are
pre-filled with NaN, so an element the algorithm forgets to write shows up in every comparison.
"""

from __future__ import annotations

import math

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.masks import key_bounds
from attnspec.reference.sdpa import attend, prepare, scores, visible, weighted_values


@reference("flash_forward")
def flash_forward(q, k, v, *, block_q: int, block_k: int, stats: dict | None = None, **options):
    """Clause ``flash.tiled``: the online-softmax forward pass over ``block_q x block_k`` tiles.

    Returns ``(out, lse)``. Tiles that hold no pair allowed by causal, window and padding are
    skipped; if ``stats`` is a dict it receives ``tiles_visited`` and ``tiles_skipped``.
    """
    block_q = check.integer("block_q", block_q, low=1)
    block_k = check.integer("block_k", block_k, low=1)
    problem = prepare(q, k, v, **options)
    b, h_q, n_q, d_v = problem.batch, problem.h_q, problem.n_q, problem.v.shape[-1]
    check.fits_in_memory(
        "flash_forward",
        ("score tile (B, H_q, block_q, block_k)", (b, h_q, min(block_q, n_q), min(block_k, problem.n_k)), 8),
        ("output (B, H_q, N_q, D_v)", (b, h_q, n_q, d_v), 8),
    )
    lo, hi = key_bounds(
        problem.n_q, problem.causal, problem.window, problem.q_lens, problem.kv_lens, problem.window_align
    )
    out = np.full((b, h_q, n_q, d_v), np.nan)
    lse = np.full((b, h_q, n_q), np.nan)
    visited = skipped = 0
    for r0 in range(0, n_q, block_q):
        rows = range(r0, min(r0 + block_q, n_q))
        state = _initial_state(b, h_q, len(rows), d_v)
        for c0 in range(0, problem.n_k, block_k):
            cols = range(c0, min(c0 + block_k, problem.n_k))
            if not _tile_has_pairs(lo[:, r0 : rows.stop], hi[:, r0 : rows.stop], cols):
                skipped += 1
                continue
            visited += 1
            state = _online_update(state, problem, rows, cols)
        out[:, :, r0 : rows.stop], lse[:, :, r0 : rows.stop] = _finish(state)
    if stats is not None:
        stats.update(tiles_visited=visited, tiles_skipped=skipped)
    return out, lse


def _initial_state(b: int, h: int, n_rows: int, d_v: int):
    return np.full((b, h, n_rows, 1), -np.inf), np.zeros((b, h, n_rows, 1)), np.zeros((b, h, n_rows, d_v))


def _tile_has_pairs(lo: np.ndarray, hi: np.ndarray, cols: range) -> bool:
    return bool((np.maximum(lo, cols.start) <= np.minimum(hi, cols.stop - 1)).any())


def _online_update(state, problem, rows: range, cols: range):
    """One step of the online softmax: rescale the running sums to the new running maximum."""
    row_max, total, acc = state
    vis = visible(problem, rows, cols)
    s = np.where(vis, scores(problem, rows, cols), -np.inf)
    new_max = np.maximum(row_max, s.max(axis=-1, keepdims=True))
    shift = np.where(np.isneginf(new_max), 0.0, new_max)
    rescale = np.exp(row_max - shift)  # exp(-inf) = 0: nothing accumulated yet
    e = np.exp(s - shift)
    total = total * rescale + e.sum(axis=-1, keepdims=True)
    acc = acc * rescale + weighted_values(e, vis, problem.v[:, :, cols.start : cols.stop])
    return new_max, total, acc


def _finish(state):
    row_max, total, acc = state
    has_key = total > 0
    safe = np.where(has_key, total, 1.0)
    out = np.where(has_key, acc / safe, 0.0)
    lse = np.where(has_key, row_max + np.log(safe), -np.inf)[..., 0]
    return out, lse


@reference("merge_partials")
def merge_partials(outs, lses):
    """Clause ``flash.merge``: combine partial ``(out, lse)`` over disjoint key sets.

    ``outs`` ``(S, B, H, N, D_v)``, ``lses`` ``(S, B, H, N)``. A partial with ``lse = -inf`` is
    ignored, whatever its ``out`` holds.
    """
    outs = check.float_array("outs", outs)
    lses = check.float_array("lses", lses)
    check.partials(outs, lses)
    if np.isnan(lses).any() or np.isposinf(lses).any():
        raise ValueError("lses must be finite or -inf")
    top = lses.max(axis=0)
    shift = np.where(np.isneginf(top), 0.0, top)
    weights = np.exp(lses - shift)
    total = weights.sum(axis=0)
    has_key = total > 0
    safe = np.where(has_key, total, 1.0)
    lse = np.where(has_key, shift + np.log(safe), -np.inf)
    contributions = np.where((weights > 0)[..., None], weights[..., None] * outs, 0.0)
    out = np.where(has_key[..., None], contributions.sum(axis=0) / safe[..., None], 0.0)
    return out, lse


@reference("split_kv")
def split_kv(q, k, v, *, num_splits: int, **options):
    """Clause ``flash.split_kv``: attention over ``num_splits`` contiguous key ranges, merged by LSE.

    Only the splits that hold a key are computed (at most ``N_k``, one when ``N_k = 0``): an empty
    split's partial has LSE ``-inf`` and adds nothing to the merge, and a ``num_splits`` far above
    ``N_k`` would otherwise loop for minutes over nothing.
    """
    num_splits = check.integer("num_splits", num_splits, low=1)
    problem = prepare(q, k, v, **options)
    n_k = problem.n_k
    chunk = max(1, math.ceil(n_k / num_splits))
    rows = range(problem.n_q)
    partials = [attend(problem, rows, range(start, min(start + chunk, n_k))) for start in range(0, max(n_k, 1), chunk)]
    return merge_partials(np.stack([o for o, _ in partials]), np.stack([lse for _, lse in partials]))


@reference("decode")
def decode(q, k_cache, v_cache, *, cache_lens, num_splits: int = 1, **options):
    """Clause ``flash.decode``: the newest ``N_new`` queries against a KV cache, causally.

    Equals ``sdpa(q, k_cache, v_cache, causal="bottom_right", kv_lens=cache_lens, **options)``;
    positions at or past ``cache_lens[b]`` are never read.
    """
    check_decode_options(options)
    q, k_cache, v_cache = (
        check.float_array(n, x, ndim=4) for n, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache))
    )
    check.kv_shapes(q, k_cache, v_cache, names=("q", "k_cache", "v_cache"))
    batch, capacity = k_cache.shape[0], k_cache.shape[2]
    cache_lens = check.int_array("cache_lens", cache_lens, shape=(batch,), low=0, high=capacity)
    return split_kv(q, k_cache, v_cache, num_splits=num_splits, causal="bottom_right", kv_lens=cache_lens, **options)


def check_decode_options(options: dict) -> None:
    """``decode`` fixes causal and the lengths itself; passing them is an error, not an override."""
    fixed = sorted({"causal", "kv_lens", "q_lens"} & set(options))
    if fixed:
        raise ValueError(f"decode sets {fixed} itself (causal bottom-right over cache_lens); do not pass them")


class KVCache:
    """A fixed-capacity key/value cache; unused capacity holds NaN so that a read of it shows."""

    def __init__(self, batch: int, kv_heads: int, capacity: int, d_qk: int, d_v: int):
        for name, value in (
            ("batch", batch),
            ("kv_heads", kv_heads),
            ("capacity", capacity),
            ("d_qk", d_qk),
            ("d_v", d_v),
        ):
            check.integer(name, value, low=1)
        check.fits_in_memory(
            "KVCache",
            ("k (batch, kv_heads, capacity, d_qk)", (batch, kv_heads, capacity, d_qk), 8),
            ("v (batch, kv_heads, capacity, d_v)", (batch, kv_heads, capacity, d_v), 8),
        )
        self.k = np.full((batch, kv_heads, capacity, d_qk), np.nan)
        self.v = np.full((batch, kv_heads, capacity, d_v), np.nan)
        self.lens = np.zeros(batch, dtype=np.int64)

    def append(self, k_new, v_new) -> None:
        """Append ``(B, H_kv, n, D)`` new keys and values after each batch item's current length."""
        k_new = check.float_array("k_new", k_new, ndim=4)
        v_new = check.float_array("v_new", v_new, ndim=4)
        n = k_new.shape[2]
        if k_new.shape[:2] != self.k.shape[:2] or k_new.shape[3] != self.k.shape[3]:
            raise ValueError(
                f"k_new must have shape (B, H_kv, n, D_qk) = {self.k.shape[:2]} + (n, {self.k.shape[3]}); got {k_new.shape}"
            )
        if v_new.shape != k_new.shape[:3] + (self.v.shape[3],):
            raise ValueError(f"v_new must have shape {k_new.shape[:3] + (self.v.shape[3],)}; got {v_new.shape}")
        if (self.lens + n > self.k.shape[2]).any():
            raise ValueError(
                f"appending {n} tokens exceeds the cache capacity {self.k.shape[2]} (lengths {self.lens.tolist()})"
            )
        for b, start in enumerate(self.lens):
            self.k[b, :, start : start + n] = k_new[b]
            self.v[b, :, start : start + n] = v_new[b]
        self.lens = self.lens + n

    def attend(self, q, **options):
        """Decode ``q`` (the newest tokens' queries) against the cache: ``(out, lse)``."""
        return decode(q, self.k, self.v, cache_lens=self.lens, **options)
