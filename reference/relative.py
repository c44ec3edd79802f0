"""Relative position schemes: T5 bucketed bias and Shaw et al.'s relative representations."""

from __future__ import annotations

import math

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic


def _bucket_params(bidirectional, num_buckets, max_distance) -> tuple[bool, int, int, int]:
    """Checked ``(bidirectional, n, exact, max_distance)`` for ``t5.bucket``."""
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise TypeError(f"bidirectional must be a bool; got {bidirectional!r}")
    num_buckets = check.integer("num_buckets", num_buckets, low=2)
    max_distance = check.integer("max_distance", max_distance, low=1)
    n = num_buckets // 2 if bidirectional else num_buckets
    exact = n // 2
    # log(rel / exact) needs exact >= 1, and dividing by log(max_distance / exact) needs it > 0.
    if exact < 1:
        raise ValueError(f"num_buckets must be >= 4 when bidirectional; got {num_buckets}")
    if max_distance <= exact:
        raise ValueError(
            f"max_distance must be > num_buckets // {2 if bidirectional else 1} // 2 = {exact}; got {max_distance}"
        )
    return bool(bidirectional), n, exact, max_distance


@reference("t5_bucket")
def t5_bucket(relative_position, *, bidirectional=True, num_buckets=32, max_distance=128) -> np.ndarray:
    """T5 bucket of each ``key - query`` offset, int64 in ``[0, num_buckets)``.

    Clause ``t5.bucket``. The log bin is evaluated in float32 in HF's order of operations and
    truncated, as trained T5 models compute it (``_float32_log_bin``).
    """
    bidirectional, n, exact, max_distance = _bucket_params(bidirectional, num_buckets, max_distance)
    rel = check.int_array("relative_position", relative_position)
    if bidirectional:
        bucket = np.where(rel > 0, n, 0).astype(np.int64)
        rel = np.abs(rel)
    else:
        bucket = np.zeros(rel.shape, dtype=np.int64)
        rel = np.maximum(-rel, 0)

    # Offsets below `exact` get a bucket each; the log is taken only where it is defined.
    offset = rel.copy()
    large = rel >= exact
    offset[large] = np.minimum(exact + _float32_log_bin(rel[large], n, exact, max_distance), n - 1)
    return bucket + offset


def _float32_log_bin(rel: np.ndarray, n: int, exact: int, max_distance: int) -> np.ndarray:
    """``trunc(log(rel / exact) / log(max_distance / exact) * (n - exact))``, each step in float32.

    HF: ``(torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
    * (num_buckets - max_exact)).to(torch.long)``. A Python float or int meeting a float32 tensor
    is rounded to float32 (torch), as NumPy 2 does with a Python scalar (NEP 50); the explicit
    casts say so. The log is the correctly rounded one: float64's log rounded to float32 (NumPy's
    own float32 log is off by an ulp on some CPUs: log(18/8) there gives bucket 31, not HF's 30).
    """
    ratio = rel.astype(np.float32) / np.float32(exact)
    log_ratio = np.log(ratio.astype(np.float64)).astype(np.float32)
    scaled = log_ratio / np.float32(math.log(max_distance / exact)) * np.float32(n - exact)
    # astype truncates toward zero, as HF's .to(torch.long); the argument is >= 0 here.
    return scaled.astype(np.int64)


@reference("t5_bias")
def t5_bias(table, q_positions, k_positions, *, bidirectional=True, num_buckets=32, max_distance=128) -> np.ndarray:
    """``bias[h, i, j] = table[t5_bucket(k_j - q_i), h]``, shape ``(H, N_q, N_k)``.

    Clause ``t5.bias``. ``table`` is ``(num_buckets, H)``; positions are 1-D and non-negative.
    """
    _bucket_params(bidirectional, num_buckets, max_distance)  # before num_buckets is used below
    table = check.float_array("table", table, ndim=2)
    if table.shape[0] != num_buckets:
        raise ValueError(f"table must have shape (num_buckets={num_buckets}, H); got {table.shape}")
    q_pos = check.int_array("q_positions", q_positions, low=0)
    k_pos = check.int_array("k_positions", k_positions, low=0)
    for name, pos in (("q_positions", q_pos), ("k_positions", k_pos)):
        if pos.ndim != 1:
            raise ValueError(f"{name} must be 1-D; got shape {pos.shape}")
    check.fits_in_memory(
        "t5_bias",
        ("buckets (N_q, N_k)", (q_pos.size, k_pos.size), 8),
        ("bias (H, N_q, N_k)", (table.shape[1], q_pos.size, k_pos.size), 8),
    )
    buckets = t5_bucket(
        k_pos[None, :] - q_pos[:, None], bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    return np.ascontiguousarray(np.moveaxis(table[buckets], -1, 0))


def _check_qkv(q, k, v):
    q = check.float_array("q", q, ndim=4)
    k = check.float_array("k", k, ndim=4)
    v = check.float_array("v", v, ndim=4)
    if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"k must have shape (B, H, N_k, D_qk) with (B, H, D_qk) of q {q.shape[:2] + q.shape[3:]}; got {k.shape}"
        )
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must have shape (B, H, N_k, D_v) with (B, H, N_k) of k {k.shape[:3]}; got {v.shape}")
    if q.shape[3] < 1:
        raise ValueError(f"head dim D_qk must be >= 1; got q of shape {q.shape}")
    return q, k, v


def _check_rel(name: str, table, rows: int, cols: int) -> np.ndarray:
    table = check.float_array(name, table, ndim=2)
    if table.shape != (rows, cols):
        raise ValueError(f"{name} must have shape (2 * max_relative + 1, D) = {(rows, cols)}; got {table.shape}")
    return table


@reference("shaw")
def shaw(q, k, v, *, rel_k, rel_v, max_relative, scale=None, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Attention with relative key and value representations, ``(B, H, N_q, D_v)``.

    Clause ``shaw``. With ``M = max_relative``, ``rel_k`` is ``(2M+1, D_qk)`` and ``rel_v`` is
    ``(2M+1, D_v)``; query ``i`` and key ``j`` are absolute (top-left) positions. No key at
    all (``N_k = 0``) gives zeros, as ``sdpa.fully_masked``.
    """
    q, k, v = _check_qkv(q, k, v)
    m = check.integer("max_relative", max_relative, low=0)
    rel_k = _check_rel("rel_k", rel_k, 2 * m + 1, q.shape[3])
    rel_v = _check_rel("rel_v", rel_v, 2 * m + 1, v.shape[3])
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else check.finite_float("scale", scale)
    b, h, n_q, n_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    check.fits_in_memory(
        "shaw",
        ("float64 scores (B, H, N_q, N_k)", (b, h, n_q, n_k), 8),
        ("relative rows (N_q, N_k, 2 * max_relative + 1)", (n_q, n_k, 2 * m + 1), 8),
    )
    q, k, v, rel_k, rel_v = (a.astype(arithmetic.compute) for a in (q, k, v, rel_k, rel_v))
    rnd = arithmetic.round
    if n_k == 0:  # the row maximum below needs at least one key
        return np.zeros(q.shape[:3] + v.shape[3:])

    # r(i, j): which relative row each (query, key) pair reads; top-left absolute positions.
    idx = np.clip(np.arange(n_k)[None, :] - np.arange(n_q)[:, None], -m, m) + m
    # q . rel_k[r] for every (i, j): score each query against the 2m+1 rows, then gather.
    q_rel = rnd(q @ rel_k.T)  # (B, H, N_q, 2m+1)
    rel_scores = np.take_along_axis(q_rel, np.broadcast_to(idx, q.shape[:2] + idx.shape), -1)
    scores = rnd(arithmetic.compute(scale) * rnd(rnd(q @ k.swapaxes(-1, -2)) + rel_scores))

    # Subtracting the row maximum keeps exp finite for any finite scores.
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = rnd(weights / weights.sum(axis=-1, keepdims=True))
    # Probability mass per relative row, then one product with rel_v instead of (N_q, N_k, D_v).
    one_hot = (idx[:, :, None] == np.arange(2 * m + 1)).astype(arithmetic.compute)
    rel_mass = rnd(np.einsum("bhij,ijr->bhir", probs, one_hot))
    return rnd(rnd(probs @ v) + rnd(rel_mass @ rel_v))
