"""Linear attention in float64 (clauses in :mod:`attnspec.linear`).

Every form computes, per query, the numerator ``f_q[i] @ S_i`` and the denominator
``dot(f_q[i], z_i)`` (:class:`Parts`); :func:`finish` then applies the rule of
``linear.normalizer``. The parallel form takes an :class:`Arithmetic`, so the conformance suite can
evaluate it in a kernel's precision for the tolerance policy; the recurrent and chunked forms are
the other evaluation orders, in float64, with Python loops over tokens or chunks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic

FEATURE_MAPS = ("elu+1", "relu", "identity")
NONNEGATIVE_MAPS = ("elu+1", "relu")
FORMS = ("parallel", "recurrent", "chunked")


class Parts(NamedTuple):
    """Numerator ``(B, H, N_q, D_v)``, denominator ``(B, H, N_q)`` and the final state ``(S, z)``."""

    num: np.ndarray
    den: np.ndarray
    state: np.ndarray
    normalizer: np.ndarray


def phi(x, name: str, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Clause ``linear.feature_map``. In a kernel's precision ``elu+1`` is ``(exp(x) - 1) + 1``, the
    textbook evaluation, each step rounded; exactly it is ``exp(x)`` for ``x <= 0``."""
    check.choice("feature_map", name, FEATURE_MAPS)
    x = np.asarray(x, arithmetic.compute)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "identity":
        return x
    below = arithmetic.round(np.exp(np.minimum(x, 0)))
    if arithmetic is not EXACT:
        below = arithmetic.round(arithmetic.round(below - 1) + 1)
    return arithmetic.round(np.where(x > 0, x + 1, below))


@reference("linear_attention")
def linear_attention(
    q,
    k,
    v,
    *,
    feature_map: str = "elu+1",
    causal: bool = False,
    form: str = "parallel",
    chunk_size: int | None = None,
    normalize: bool = True,
    scale: float = 1.0,
    eps: float = 0.0,
    initial_state=None,
    initial_normalizer=None,
    output_final_state: bool = False,
    arithmetic: Arithmetic = EXACT,
):
    """Clause ``linear.parallel`` and the forms of ``linear.recurrent`` and ``linear.chunked``.

    Returns ``out``, or ``(out, state, normalizer)`` with ``output_final_state``.
    """
    p = parts(
        q,
        k,
        v,
        feature_map=feature_map,
        causal=causal,
        form=form,
        chunk_size=chunk_size,
        normalize=normalize,
        scale=scale,
        eps=eps,
        initial_state=initial_state,
        initial_normalizer=initial_normalizer,
        arithmetic=arithmetic,
    )
    out = arithmetic.round(finish(p.num, p.den, normalize=normalize, eps=eps))
    return (out, p.state, p.normalizer) if output_final_state else out


def parts(
    q,
    k,
    v,
    *,
    feature_map: str = "elu+1",
    causal: bool = False,
    form: str = "parallel",
    chunk_size: int | None = None,
    normalize: bool = True,
    scale: float = 1.0,
    eps: float = 0.0,
    initial_state=None,
    initial_normalizer=None,
    arithmetic: Arithmetic = EXACT,
) -> Parts:
    """The validated call's numerator, denominator and final state, by the requested form."""
    q, k, v, s0, z0 = validate(
        q,
        k,
        v,
        feature_map=feature_map,
        causal=causal,
        form=form,
        chunk_size=chunk_size,
        normalize=normalize,
        scale=scale,
        eps=eps,
        initial_state=initial_state,
        initial_normalizer=initial_normalizer,
    )
    fq = arithmetic.round(phi(q, feature_map, arithmetic) * arithmetic.compute(scale))
    fk = phi(k, feature_map, arithmetic)
    if form == "parallel":
        return parallel(fq, fk, v, s0, z0, causal=causal, arithmetic=arithmetic)
    if arithmetic is not EXACT:
        raise ValueError("only the parallel form is evaluated in a kernel's precision")
    if form == "recurrent":
        return recurrent(fq, fk, v, s0, z0, causal=causal)
    return chunked(fq, fk, v, s0, z0, causal=causal, chunk_size=chunk_size)


def finish(num: np.ndarray, den: np.ndarray, *, normalize: bool, eps: float = 0.0) -> np.ndarray:
    """Clause ``linear.normalizer``: ``num / (den + eps)``, and exactly 0 where ``den + eps == 0``."""
    if not normalize:
        return num
    den = den + eps
    zero = den == 0
    return np.where(zero[..., None], 0.0, num / np.where(zero, 1.0, den)[..., None])


def parallel(fq, fk, v, s0, z0, *, causal: bool, arithmetic: Arithmetic = EXACT) -> Parts:
    """``(f_q f_k^T * M) v + f_q S0`` and its row sums plus ``f_q z0``: the quadratic form."""
    b, h, n_q = fq.shape[:3]
    itemsize = np.dtype(arithmetic.compute).itemsize
    check.fits_in_memory(
        "linear attention's parallel form", ("weights (B, H, N_q, N_k)", (b, h, n_q, fk.shape[2]), itemsize)
    )
    a = arithmetic.round(arithmetic.matmul(fq, np.swapaxes(fk, -1, -2)))
    if causal:
        a = np.where(np.tri(a.shape[-2], a.shape[-1], dtype=bool), a, 0)  # masked pairs carry exactly zero weight
    v = v.astype(arithmetic.compute)
    ones = np.ones((a.shape[-1], 1), arithmetic.compute)
    num = arithmetic.round(arithmetic.matmul(a, v) + arithmetic.matmul(fq, s0.astype(arithmetic.compute)))
    den = arithmetic.round(
        arithmetic.matmul(a, ones)[..., 0] + arithmetic.matmul(fq, z0.astype(arithmetic.compute)[..., None])[..., 0]
    )
    fk_t = np.swapaxes(fk, -1, -2)
    state = arithmetic.round(s0.astype(arithmetic.compute) + arithmetic.matmul(fk_t, v))
    normalizer = arithmetic.round(z0.astype(arithmetic.compute) + arithmetic.matmul(fk_t, ones)[..., 0])
    return Parts(num, den, state, normalizer)


def recurrent(fq, fk, v, s0, z0, *, causal: bool) -> Parts:
    """One state update per token; causally each token updates the state, then reads it."""
    state, normalizer = s0.copy(), z0.copy()
    if not causal:
        for t in range(fk.shape[-2]):
            state += fk[..., t, :, None] * v[..., t, None, :]
            normalizer += fk[..., t, :]
        return Parts(fq @ state, np.einsum("bhnf,bhf->bhn", fq, normalizer), state, normalizer)
    num = np.full(fq.shape[:-1] + v.shape[-1:], np.nan)  # NaN shows a row the loop forgot
    den = np.full(fq.shape[:-1], np.nan)
    for t in range(fk.shape[-2]):
        state += fk[..., t, :, None] * v[..., t, None, :]
        normalizer += fk[..., t, :]
        num[..., t, :] = np.einsum("bhf,bhfd->bhd", fq[..., t, :], state)
        den[..., t] = np.einsum("bhf,bhf->bh", fq[..., t, :], normalizer)
    return Parts(num, den, state, normalizer)


def chunked(fq, fk, v, s0, z0, *, causal: bool, chunk_size: int) -> Parts:
    """Chunks of ``chunk_size`` tokens: quadratic inside a chunk, the carried state between chunks."""
    state, normalizer = s0.copy(), z0.copy()
    num = np.full(fq.shape[:-1] + v.shape[-1:], np.nan)
    den = np.full(fq.shape[:-1], np.nan)
    n_k = fk.shape[-2]
    for c0 in range(0, n_k, chunk_size):
        c = slice(c0, min(c0 + chunk_size, n_k))
        fk_c, v_c = fk[..., c, :], v[..., c, :]
        if causal:
            a = fq[..., c, :] @ np.swapaxes(fk_c, -1, -2)
            a = np.where(np.tri(a.shape[-1], dtype=bool), a, 0)
            num[..., c, :] = fq[..., c, :] @ state + a @ v_c
            den[..., c] = np.einsum("bhnf,bhf->bhn", fq[..., c, :], normalizer) + a.sum(axis=-1)
        state += np.swapaxes(fk_c, -1, -2) @ v_c
        normalizer += fk_c.sum(axis=-2)
    if not causal:  # every key is in the state: the queries read it chunk by chunk
        for c0 in range(0, fq.shape[-2], chunk_size):
            c = slice(c0, c0 + chunk_size)
            num[..., c, :] = fq[..., c, :] @ state
            den[..., c] = np.einsum("bhnf,bhf->bhn", fq[..., c, :], normalizer)
    return Parts(num, den, state, normalizer)


def check_qkv(q, k, v, causal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapes ``(B, H, N_q, D_qk)``, ``(B, H, N_k, D_qk)``, ``(B, H, N_k, D_v)``; causal needs ``N_q == N_k``."""
    q, k, v = (check.float_array(name, x, ndim=4) for name, x in (("q", q), ("k", k), ("v", v)))
    b, h, n_q, d = q.shape
    if n_q < 1 or d < 1:
        raise ValueError(f"q must have N_q >= 1 and D_qk >= 1; got shape {q.shape}")
    if k.shape[:2] != (b, h) or k.shape[3] != d or k.shape[2] < 1:
        raise ValueError(f"k must have shape (B, H, N_k, D_qk) = ({b}, {h}, N_k >= 1, {d}); got {k.shape}")
    if v.shape[:3] != k.shape[:3] or v.shape[3] < 1:
        raise ValueError(f"v must have shape (B, H, N_k, D_v) = {k.shape[:3]} + (D_v >= 1,); got {v.shape}")
    _flag("causal", causal)
    if causal and n_q != k.shape[2]:
        raise ValueError(
            f"causal linear attention needs N_q == N_k; got N_q = {n_q}, N_k = {k.shape[2]} "
            "(carry earlier tokens in initial_state)"
        )
    return q, k, v


def _flag(name: str, flag) -> None:
    if not isinstance(flag, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {flag!r}")


def validate(
    q,
    k,
    v,
    *,
    feature_map: str = "elu+1",
    causal: bool = False,
    form: str = "parallel",
    chunk_size: int | None = None,
    normalize: bool = True,
    scale: float = 1.0,
    eps: float = 0.0,
    initial_state=None,
    initial_normalizer=None,
    output_final_state: bool = False,
):
    """The checked arguments of ``linear_attention``: ``(q, k, v, S0, z0)`` in float64, zeros for no state."""
    _flag("output_final_state", output_final_state)
    s0, z0 = initial_state, initial_normalizer
    q, k, v = check_qkv(q, k, v, causal)
    b, h, _, d = q.shape
    check.choice("feature_map", feature_map, FEATURE_MAPS)
    check.choice("form", form, FORMS)
    _flag("normalize", normalize)
    if form == "chunked":
        chunk_size = check.integer("chunk_size", chunk_size, low=1)
    elif chunk_size is not None:
        raise ValueError(f"chunk_size is only for form='chunked'; got chunk_size={chunk_size!r} with form={form!r}")
    if normalize and feature_map not in NONNEGATIVE_MAPS:
        raise ValueError(
            f"normalize=True needs a non-negative feature map {NONNEGATIVE_MAPS}; got feature_map="
            f"{feature_map!r} (use normalize=False)"
        )
    check.positive_float("scale", scale)
    if check.finite_float("eps", eps) < 0:
        raise ValueError(f"eps must be >= 0; got {eps}")
    f, d_v = d, v.shape[3]
    s0 = np.zeros((b, h, f, d_v)) if s0 is None else _state("initial_state", s0, (b, h, f, d_v))
    z0 = np.zeros((b, h, f)) if z0 is None else _state("initial_normalizer", z0, (b, h, f))
    if normalize and (z0 < 0).any():
        raise ValueError("initial_normalizer must be >= 0 with normalize=True (it is a sum of non-negative features)")
    return q, k, v, s0, z0


def _state(name: str, x, shape: tuple) -> np.ndarray:
    x = check.float_array(name, x)
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


@reference("efficient_attention")
def efficient_attention(q, k, v, *, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Clause ``linear.efficient``: ``softmax_features(q) @ (softmax_keys(k)^T @ v)`` (Shen et al., 2021)."""
    q, k, v = check_qkv(q, k, v, False)
    rho_q = _softmax(q, axis=-1, arithmetic=arithmetic)
    rho_k = _softmax(k, axis=-2, arithmetic=arithmetic)
    context = arithmetic.round(arithmetic.matmul(np.swapaxes(rho_k, -1, -2), v.astype(arithmetic.compute)))
    return arithmetic.round(arithmetic.matmul(rho_q, context))


def _softmax(x: np.ndarray, *, axis: int, arithmetic: Arithmetic) -> np.ndarray:
    x = x.astype(arithmetic.compute)
    e = arithmetic.round(np.exp(x - x.max(axis=axis, keepdims=True)))
    return arithmetic.round(e / e.sum(axis=axis, keepdims=True))
