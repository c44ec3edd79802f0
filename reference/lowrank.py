"""Linformer and Transformer-XL memory attention in float64 (clauses in :mod:`attnspec.lowrank`).

Each builds keys and values and hands them to :func:`attnspec.reference.sdpa.sdpa`: Linformer
projects them along the sequence, Transformer-XL puts the memory in front of the segment. The
segment recurrence is written as the algorithm (a loop over segments that updates the memory);
:func:`xl_band` is the visibility rule the loop amounts to.
"""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic
from attnspec.reference.sdpa import attend, prepare, sdpa


@reference("linformer")
def linformer(q, k, v, *, e, f, scale=None, arithmetic: Arithmetic = EXACT):
    """Clause ``linformer``: ``sdpa(q, E @ k, F @ v, scale=scale)``.

    ``e`` and ``f`` are ``(k_proj, N)`` (shared by all heads) or ``(H_kv, k_proj, N)`` (per
    key/value head), the same shape; ``N = k.shape[2] >= 1``.
    """
    base = prepare(q, k, v)  # validates q, k, v and their head grouping
    if base.n_k < 1:
        raise ValueError(f"k must hold N >= 1 positions for Linformer to project; got k of shape {base.k.shape}")
    e = _projection("e", e, base.h_kv, base.n_k)
    f = _projection("f", f, base.h_kv, base.n_k)
    if f.shape != e.shape:
        raise ValueError(
            f"f must have e's shape {e.shape} (the keys and values are projected to the same k_proj "
            f"positions); got f of shape {f.shape}"
        )
    problem = prepare(base.q, project(e, base.k, arithmetic), project(f, base.v, arithmetic), scale=scale)
    out, _ = attend(problem, range(problem.n_q), range(problem.n_k), arithmetic)
    return out


def project(p: np.ndarray, x: np.ndarray, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """``p @ x`` along the sequence: ``(k_proj, N)`` or ``(H, k_proj, N)`` times ``(B, H, N, D)``."""
    c = arithmetic.compute
    return arithmetic.round(arithmetic.matmul(np.asarray(p).astype(c), np.asarray(x).astype(c)))


def _projection(name: str, p, h_kv: int, n: int) -> np.ndarray:
    p = check.float_array(name, p)
    if p.ndim not in (2, 3):
        raise ValueError(f"{name} must be (k_proj, N) or (H_kv, k_proj, N); got shape {p.shape}")
    if p.shape[-1] != n:
        raise ValueError(f"{name} must have N = {n} columns (one per key position it projects); got shape {p.shape}")
    if p.ndim == 3 and p.shape[0] != h_kv:
        raise ValueError(f"a per-head {name} must have H_kv = {h_kv} projections; got shape {p.shape}")
    if p.shape[-2] < 1:
        raise ValueError(f"{name} must project to k_proj >= 1 positions; got shape {p.shape}")
    return p


def _same_positions(q, k, v, what: str):
    """The checked arrays of a self-attention call: queries and keys at the same ``N`` positions."""
    p = prepare(q, k, v)
    if p.n_q != p.n_k:
        raise ValueError(
            f"q and k must cover the same {what} (N_q = N); got q of shape {p.q.shape}, k of shape {p.k.shape}"
        )
    return p


@reference("xl_attention")
def xl_attention(q, k, v, *, mem_k, mem_v, scale=None):
    """Clause ``xl.memory``: ``sdpa(q, [mem_k; k], [mem_v; v], causal="bottom_right", scale=scale)``."""
    seg = _same_positions(q, k, v, "segment")
    mem_k = check.float_array("mem_k", mem_k, ndim=4)
    mem_v = check.float_array("mem_v", mem_v, ndim=4)
    b, h_kv, _, d_qk = seg.k.shape
    if mem_k.shape[:2] != (b, h_kv) or mem_k.shape[3] != d_qk:
        raise ValueError(f"mem_k must have shape (B, H_kv, M, D_qk) = ({b}, {h_kv}, M, {d_qk}); got {mem_k.shape}")
    expected_v = mem_k.shape[:3] + seg.v.shape[3:]
    if mem_v.shape != expected_v:
        raise ValueError(
            f"mem_v must have shape (B, H_kv, M, D_v) = {expected_v}, the same memory length "
            f"M = {mem_k.shape[2]} as mem_k; got {mem_v.shape}"
        )
    keys = np.concatenate([mem_k, seg.k], axis=2)
    values = np.concatenate([mem_v, seg.v], axis=2)
    return sdpa(seg.q, keys, values, causal="bottom_right", scale=scale)


@reference("xl_recurrent")
def xl_recurrent(q, k, v, *, segment_len: int, mem_len: int, scale=None):
    """Clause ``xl.recurrence``: segments of ``segment_len``, each over the last ``mem_len`` cached keys/values."""
    whole = _same_positions(q, k, v, "sequence")
    segment_len = check.integer("segment_len", segment_len, low=1)
    mem_len = check.integer("mem_len", mem_len, low=0)
    n = whole.n_q
    out = np.full(whole.q.shape[:3] + whole.v.shape[3:], np.nan)  # a segment the loop skips shows as NaN
    mem_k, mem_v = whole.k[:, :, :0], whole.v[:, :, :0]
    for start in range(0, n, segment_len):
        seg = slice(start, min(start + segment_len, n))
        out[:, :, seg] = xl_attention(
            whole.q[:, :, seg], whole.k[:, :, seg], whole.v[:, :, seg], mem_k=mem_k, mem_v=mem_v, scale=scale
        )
        # The next memory: the last mem_len positions of [memory; segment] (all of them while fewer exist).
        cat_k = np.concatenate([mem_k, whole.k[:, :, seg]], axis=2)
        cat_v = np.concatenate([mem_v, whole.v[:, :, seg]], axis=2)
        keep_from = max(0, cat_k.shape[2] - mem_len)
        mem_k, mem_v = cat_k[:, :, keep_from:], cat_v[:, :, keep_from:]
    return out


def xl_band(n: int, segment_len: int, mem_len: int) -> np.ndarray:
    """The visibility of ``xl.recurrence``, ``(n, n)``: ``L floor(i / L) - M <= j <= i``."""
    segment_len = check.integer("segment_len", segment_len, low=1)
    mem_len = check.integer("mem_len", mem_len, low=0)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return (j <= i) & (j >= (i // segment_len) * segment_len - mem_len)
