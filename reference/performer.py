"""Performer (FAVOR+) in float64 (clauses ``performer.*`` in :mod:`attnspec.linear`).

Attention is evaluated from the feature logits ``dot(w_f, x) - |x|^2 / 2``, shifted so that no
feature overflows and no visible key underflows because of another key. The query logits are
shifted by their row maximum. Non-causally the key logits are shifted by their maximum over all
keys and features of a ``(b, h)``. Causally that maximum would let a later key underflow an
earlier one (clause ``performer``), so row ``i`` uses ``c_i``, the maximum over keys ``j <= i``
(a running maximum): key ``j``'s features are stored at its own ``c_j`` and weighted by
``exp(c_j - c_i) <= 1`` in row ``i``, and the carried state is rescaled as ``c`` grows, as online
softmax rescales its sums. Every shift cancels in the normalised output, as does the
``1 / sqrt(m)`` of the features, which is left out.
"""

from __future__ import annotations

import math

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference import linear
from attnspec.reference.arithmetic import EXACT, Arithmetic

#: Chunk size of the float64 evaluation: any size gives the same sums; 64 keeps memory linear in N.
CHUNK = 64


@reference("performer_features")
def performer_features(x, projection, *, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Clause ``performer.features``: ``exp(x W^T - |x|^2 / 2) / sqrt(m)``, shape ``(..., m)``."""
    x = check.float_array("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (..., D); got a scalar")
    w = _projection(projection, x.shape[-1])
    return arithmetic.round(np.exp(logits(x, w, arithmetic)) / arithmetic.compute(math.sqrt(w.shape[0])))


def logits(x: np.ndarray, w: np.ndarray, arithmetic: Arithmetic) -> np.ndarray:
    """``dot(w_f, x) - |x|^2 / 2`` for every row of ``x`` and every ``w_f``: ``(..., m)``."""
    x, w = x.astype(arithmetic.compute), w.astype(arithmetic.compute)
    half_sq = arithmetic.round(arithmetic.matmul(x[..., None, :], x[..., :, None])[..., 0] / 2)
    return arithmetic.round(arithmetic.round(arithmetic.matmul(x, w.T)) - half_sq)


def _projection(projection, d: int) -> np.ndarray:
    w = check.float_array("projection", projection, ndim=2)
    if w.shape[0] < 1 or w.shape[1] != d:
        raise ValueError(f"projection must have shape (m >= 1, D) with D = x.shape[-1] = {d}; got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("projection must be finite")
    return w


@reference("orthogonal_projection")
def orthogonal_projection(gaussian_blocks, norms, *, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Clause ``performer.orthogonal``: rows of each block's sign-fixed ``Q``, scaled by ``norms``."""
    norms = check.float_array("norms", norms, ndim=1)
    g = check.float_array("gaussian_blocks", gaussian_blocks, ndim=3)
    m, d = norms.shape[0], g.shape[-1]
    if m < 1 or d < 1 or g.shape != (math.ceil(m / d), d, d):
        raise ValueError(f"gaussian_blocks must have shape (ceil(m / D), D, D) for m = len(norms) = {m}; got {g.shape}")
    if not (np.isfinite(norms).all() and (norms >= 0).all()):
        raise ValueError("norms must be finite and >= 0")
    if not np.isfinite(g).all():
        raise ValueError("gaussian_blocks must be finite")
    q, r = np.linalg.qr(g.astype(arithmetic.compute))  # naive float32: LAPACK sgeqrf, as a float32 kernel
    diag = np.diagonal(r, axis1=-2, axis2=-1)
    # Householder QR is backward stable: a |R_cc| at rounding level (D eps max |R_b|) may be a
    # rounded zero, and then column c of Q_b is set by rounding alone (a rank-deficient block).
    singular = np.abs(diag) <= d * np.finfo(np.float64).eps * np.abs(r).max(axis=(-2, -1))[:, None]
    if singular.any() and arithmetic is EXACT:
        b, c = (int(i) for i in np.argwhere(singular)[0])
        raise ValueError(
            f"gaussian_blocks[{b}] is singular: |R[{c}, {c}]| of its QR factorisation is "
            f"<= D eps max |R| (D = {d}, eps = 2^-52), so its Q factor is not determined"
        )
    q = q * np.sign(diag)[:, None, :]  # column c of Q_b times sign(R_b[c, c]): R's diagonal positive
    rows = np.swapaxes(q, -1, -2).reshape(-1, d)[:m]
    return arithmetic.round(rows * norms.astype(arithmetic.compute)[:, None])


@reference("performer")
def performer(
    q, k, v, *, projection, causal: bool = False, scale: float | None = None, arithmetic: Arithmetic = EXACT
) -> np.ndarray:
    """Clause ``performer``: normalised linear attention with FAVOR+ features of the scaled q and k."""
    q, k, v = linear.check_qkv(q, k, v, causal)
    w = _projection(projection, q.shape[-1])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check.positive_float("scale", scale)
    root = arithmetic.compute(math.sqrt(scale))
    lq = logits(arithmetic.round(q.astype(arithmetic.compute) * root), w, arithmetic)
    lk = logits(arithmetic.round(k.astype(arithmetic.compute) * root), w, arithmetic)
    return attend_logits(lq, lk, v, causal=causal, arithmetic=arithmetic)


def attend_logits(
    lq: np.ndarray, lk: np.ndarray, v: np.ndarray, *, causal: bool, arithmetic: Arithmetic = EXACT
) -> np.ndarray:
    """Normalised linear attention with features ``exp(logits)``, shifted so nothing overflows."""
    fq = arithmetic.round(np.exp(lq - lq.max(axis=-1, keepdims=True)))
    v = np.asarray(v, arithmetic.compute)
    if causal:
        shift = np.maximum.accumulate(lk.max(axis=-1), axis=-1)  # c_i: the maximum over keys j <= i
        fk = arithmetic.round(np.exp(lk - shift[..., None]))
        if arithmetic is EXACT:
            num, den = _causal_chunks(fq, fk, shift, v, CHUNK)
        else:  # a naive kernel: the quadratic form, every step rounded
            num, den = _causal_parallel(fq, fk, shift, v, arithmetic)
        return arithmetic.round(linear.finish(num, den, normalize=True))
    fk = arithmetic.round(np.exp(lk - lk.max(axis=(-2, -1), keepdims=True)))
    b, h, _, m = fq.shape
    zeros_s, zeros_z = np.zeros((b, h, m, v.shape[-1])), np.zeros((b, h, m))
    if arithmetic is EXACT:  # the same sums in linear time and memory (forms agree to ~1e-12)
        p = linear.chunked(fq, fk, v, zeros_s, zeros_z, causal=False, chunk_size=CHUNK)
    else:
        p = linear.parallel(fq, fk, v, zeros_s, zeros_z, causal=False, arithmetic=arithmetic)
    return arithmetic.round(linear.finish(p.num, p.den, normalize=True))


def _decay(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``exp(c_j - c_i)`` for query ``i`` (``rows``) and key ``j <= i`` (``cols``), else 0: ``<= 1``."""
    visible = np.tri(rows.shape[-1], dtype=bool)  # masked before exp: c_j - c_i > 0 for j > i may overflow
    return np.exp(np.where(visible, cols[..., None, :] - rows[..., :, None], -np.inf))


def _causal_parallel(fq, fk, shift, v, arithmetic: Arithmetic) -> tuple[np.ndarray, np.ndarray]:
    """``num_i = sum_{j <= i} dot(fq_i, fk_j) exp(c_j - c_i) v_j`` and ``den_i`` alike, quadratically."""
    a = arithmetic.round(arithmetic.matmul(fq, np.swapaxes(fk, -1, -2)))
    a = arithmetic.round(a * arithmetic.round(_decay(shift, shift)))
    num = arithmetic.round(arithmetic.matmul(a, v))
    den = arithmetic.round(arithmetic.matmul(a, np.ones((a.shape[-1], 1), arithmetic.compute))[..., 0])
    return num, den


def _causal_chunks(fq, fk, shift, v, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The sums of :func:`_causal_parallel` chunk by chunk, the state ``(S, z)`` held at the shift
    ``carried`` of the last key added and rescaled by ``exp(carried - c)`` when read or extended."""
    b, h, n, m = fq.shape
    state, normalizer = np.zeros((b, h, m, v.shape[-1])), np.zeros((b, h, m))
    carried = np.full((b, h), -np.inf)  # exp(-inf - c) = 0 scales the empty state
    num, den = np.full((b, h, n, v.shape[-1]), np.nan), np.full((b, h, n), np.nan)
    for c0 in range(0, n, chunk):
        c = slice(c0, min(c0 + chunk, n))
        s, fq_c, fk_c, v_c = shift[..., c], fq[..., c, :], fk[..., c, :], v[..., c, :]
        a = (fq_c @ np.swapaxes(fk_c, -1, -2)) * _decay(s, s)
        back = np.exp(carried[..., None] - s)  # the state, from its shift to each row's
        num[..., c, :] = back[..., None] * (fq_c @ state) + a @ v_c
        den[..., c] = back * np.einsum("bhnf,bhf->bhn", fq_c, normalizer) + a.sum(axis=-1)
        end = s[..., -1]
        fk_end = fk_c * np.exp(s - end[..., None])[..., None]  # this chunk's keys at the new shift
        rescale = np.exp(carried - end)  # <= 1: the state moves to the new, larger shift
        state = rescale[..., None, None] * state + np.swapaxes(fk_end, -1, -2) @ v_c
        normalizer = rescale[..., None] * normalizer + fk_end.sum(axis=-2)
        carried = end
    return num, den
