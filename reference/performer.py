"""Performer (FAVOR+) in float64 (clauses ``performer.*`` in :mod:`attnspec.linear`).

Attention is evaluated from the feature logits ``dot(w_f, x) - |x|^2 / 2``: the query logits are
shifted by their row maximum and the key logits by their maximum over all keys and features of a
``(b, h)``. Both shifts cancel in the normalised output, and neither can underflow a row because
of other keys: the full logits are bounded above by ``max_f |w_f|^2 / 2`` (see the clause
``performer``). The ``1 / sqrt(m)`` of the features cancels as well and is left out.
"""

from __future__ import annotations

import math

import numpy as np

from attnspec.reference import _checks as check
from attnspec.reference import linear
from attnspec.reference.arithmetic import EXACT, Arithmetic

#: Chunk size of the float64 evaluation: any size gives the same sums; 64 keeps memory linear in N.
CHUNK = 64


def performer_features(x, projection, *, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Clause ``performer.features``: ``exp(x W^T - |x|^2 / 2) / sqrt(m)``, shape ``(..., m)``."""
    x = check.float_array("x", x)
    w = _projection(projection, x.shape[-1] if x.ndim else None)
    return arithmetic.round(np.exp(logits(x, w, arithmetic)) / arithmetic.compute(math.sqrt(w.shape[0])))


def logits(x: np.ndarray, w: np.ndarray, arithmetic: Arithmetic) -> np.ndarray:
    """``dot(w_f, x) - |x|^2 / 2`` for every row of ``x`` and every ``w_f``: ``(..., m)``."""
    x, w = x.astype(arithmetic.compute), w.astype(arithmetic.compute)
    half_sq = arithmetic.round(arithmetic.matmul(x[..., None, :], x[..., :, None])[..., 0] / 2)
    return arithmetic.round(arithmetic.round(arithmetic.matmul(x, w.T)) - half_sq)


def _projection(projection, d: int | None) -> np.ndarray:
    w = check.float_array("projection", projection, ndim=2)
    if w.shape[0] < 1 or d is None or w.shape[1] != d:
        raise ValueError(f"projection must have shape (m >= 1, D) with D = x.shape[-1] = {d}; got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("projection must be finite")
    return w


def orthogonal_projection(gaussian_blocks, norms) -> np.ndarray:
    """Clause ``performer.orthogonal``: rows of each block's sign-fixed ``Q``, scaled by ``norms``."""
    norms = check.float_array("norms", norms, ndim=1)
    g = check.float_array("gaussian_blocks", gaussian_blocks, ndim=3)
    m, d = norms.shape[0], g.shape[-1]
    if m < 1 or d < 1 or g.shape != (math.ceil(m / d), d, d):
        raise ValueError(f"gaussian_blocks must have shape (ceil(m / D), D, D) for m = len(norms) = {m}; "
                         f"got {g.shape}")
    if not (np.isfinite(norms).all() and (norms >= 0).all()):
        raise ValueError("norms must be finite and >= 0")
    if not np.isfinite(g).all():
        raise ValueError("gaussian_blocks must be finite")
    q, r = np.linalg.qr(g)
    diag = np.diagonal(r, axis1=-2, axis2=-1)
    if (diag == 0).any():
        raise ValueError(f"gaussian_blocks[{int(np.argwhere(diag == 0)[0, 0])}] is singular: its Q factor is not unique")
    q = q * np.sign(diag)[:, None, :]  # column c of Q_b times sign(R_b[c, c]): R's diagonal positive
    rows = np.swapaxes(q, -1, -2).reshape(-1, d)[:m]
    return rows * norms[:, None]


def performer(q, k, v, *, projection, causal: bool = False, scale: float | None = None,
              arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Clause ``performer``: normalised linear attention with FAVOR+ features of the scaled q and k."""
    q, k, v = linear.check_qkv(q, k, v, causal)
    w = _projection(projection, q.shape[-1])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check.positive_float("scale", scale)
    root = arithmetic.compute(math.sqrt(scale))
    lq = logits(arithmetic.round(q.astype(arithmetic.compute) * root), w, arithmetic)
    lk = logits(arithmetic.round(k.astype(arithmetic.compute) * root), w, arithmetic)
    return attend_logits(lq, lk, v, causal=causal, arithmetic=arithmetic)


def attend_logits(lq: np.ndarray, lk: np.ndarray, v: np.ndarray, *, causal: bool,
                  arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Normalised linear attention with features ``exp(logits)``, shifted so nothing overflows."""
    fq = arithmetic.round(np.exp(lq - lq.max(axis=-1, keepdims=True)))
    fk = arithmetic.round(np.exp(lk - lk.max(axis=(-2, -1), keepdims=True)))
    b, h, _, m = fq.shape
    zeros_s, zeros_z = np.zeros((b, h, m, v.shape[-1])), np.zeros((b, h, m))
    if arithmetic is EXACT:  # the same sums in linear time and memory (forms agree to ~1e-12)
        p = linear.chunked(fq, fk, np.asarray(v, np.float64), zeros_s, zeros_z, causal=causal, chunk_size=CHUNK)
    else:  # a naive kernel: the quadratic form, every step rounded
        p = linear.parallel(fq, fk, v, zeros_s, zeros_z, causal=causal, arithmetic=arithmetic)
    return arithmetic.round(linear.finish(p.num, p.den, normalize=True))
