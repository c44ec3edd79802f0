"""Retention (RetNet) in float64 (clauses in :mod:`attnspec.retention`).

One building block, :func:`block`, evaluates the parallel form over a run of positions that
starts from a given state, and returns the state after the run. The parallel form is one block
over the whole sequence, the chunkwise form a loop of blocks carrying the state, and the
recurrent form a loop of single steps. An :class:`Arithmetic` says in which precision the
formulas run (the conformance suite evaluates them in a kernel's dtype for its tolerance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic

FORMS = ("parallel", "recurrent", "chunkwise")


@dataclass(frozen=True)
class Problem:
    """Validated inputs of one retention call (float64)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    gammas: np.ndarray
    scale: float
    state: np.ndarray


@reference("retention")
def retention(
    q,
    k,
    v,
    *,
    gammas,
    form: str = "parallel",
    chunk_size: int | None = None,
    scale=None,
    initial_state=None,
    return_state: bool = False,
    arithmetic: Arithmetic = EXACT,
):
    """Clauses ``retention.*``: the output ``(B, H, N, D_v)``, and the final state if ``return_state``.

    ``q``, ``k`` ``(B, H, N, D_k)``, ``v`` ``(B, H, N, D_v)``, ``gammas`` ``(H,)`` in ``[0, 1]``
    (float32 or float64, whatever the dtype of ``q``),
    ``initial_state`` ``(B, H, D_k, D_v)`` or None. ``form`` is "parallel", "recurrent" or
    "chunkwise"; ``chunk_size`` (an integer >= 1) is given for "chunkwise" only.
    """
    form, chunk_size = check_form(form, chunk_size)
    if not isinstance(return_state, (bool, np.bool_)):
        raise TypeError(f"return_state must be a bool; got {return_state!r}")
    p = prepare(q, k, v, gammas=gammas, scale=scale, initial_state=initial_state)
    if form == "parallel":
        out, state = block(p.q, p.k, p.v, p.gammas, p.scale, p.state, arithmetic)
    elif form == "recurrent":
        out, state = recurrent(p, arithmetic)
    else:
        out, state = chunkwise(p, chunk_size, arithmetic)
    return (out, state) if return_state else out


def check_form(form: str, chunk_size) -> tuple[str, int | None]:
    """``(form, chunk_size)`` checked: a form of :data:`FORMS`, and a chunk size for "chunkwise" only."""
    form = check.choice("form", form, FORMS)
    if form == "chunkwise":
        if chunk_size is None:
            raise ValueError("chunk_size is required for form='chunkwise' (an integer >= 1)")
        return form, check.integer("chunk_size", chunk_size, low=1)
    if chunk_size is not None:
        raise ValueError(f"chunk_size is only for form='chunkwise'; got chunk_size={chunk_size!r} with form={form!r}")
    return form, None


@reference("retention_decays")
def retention_decays(num_heads: int) -> np.ndarray:
    """Clause ``retention.multiscale``: ``1 - 2^(-5 - h)`` for ``h = 0 .. num_heads - 1`` (float64)."""
    num_heads = check.integer("num_heads", num_heads, low=1)
    check.fits_in_memory("retention_decays", ("decays (num_heads,)", (num_heads,), 8))
    return 1.0 - 2.0 ** (-5.0 - np.arange(num_heads))


def decay_powers(gammas: np.ndarray, exponents, dtype=np.float64) -> np.ndarray:
    """``gammas[h] ** e`` for integer ``e >= 0``, shape ``(H, *e.shape)``, with ``0 ** 0 = 1``.

    Evaluated as ``exp(e * log(gamma))``: it underflows to zero for large ``e`` or small gamma and
    never produces NaN or infinity (``log 0 = -inf``, and ``e = 0`` is taken as exactly 1).
    """
    e = np.asarray(exponents, dtype=dtype)
    g = np.asarray(gammas, dtype=dtype).reshape((-1,) + (1,) * e.ndim)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_g = np.log(g)
        return np.where(e == 0, dtype(1), np.exp(np.where(e == 0, dtype(0), e * log_g)))


def causal_decay(gammas: np.ndarray, n: int, dtype=np.float64, powers=decay_powers) -> np.ndarray:
    """The decay matrix ``D`` ``(H, n, n)``: ``gamma^(r - s)`` where ``s <= r``, else exactly 0."""
    diff = np.arange(n)[:, None] - np.arange(n)[None, :]
    return np.where(diff >= 0, powers(gammas, np.maximum(diff, 0), dtype), dtype(0))


def block(q, k, v, gammas, scale: float, state, arithmetic: Arithmetic = EXACT, powers=decay_powers):
    """The parallel form over positions ``0 .. n-1`` starting from ``state``: ``(out, state after)``.

    ``out[r] = sum_{s <= r} g^(r-s) scale (q_r . k_s) v_s + g^(r+1) scale q_r @ state`` and the
    state after is ``g^n state + sum_s g^(n-1-s) outer(k_s, v_s)``. ``powers(gammas, e, dtype)``
    evaluates the decays (the conformance suite swaps in weighted decays to size its bound).
    """
    c = arithmetic.compute
    b, h, n = np.shape(q)[:3]
    check.fits_in_memory("retention", ("scores (B, H, N, N) of a parallel block", (b, h, n, n), np.dtype(c).itemsize))
    q, k, v, state = (np.asarray(x).astype(c) for x in (q, k, v, state))
    pos = np.arange(n)
    s = arithmetic.round(arithmetic.matmul(q, np.swapaxes(k, -1, -2)) * c(scale))
    s = arithmetic.round(s * causal_decay(gammas, n, c, powers))
    carried = arithmetic.round(arithmetic.matmul(q, state) * c(scale)) * powers(gammas, pos + 1, c)[..., None]
    out = arithmetic.round(arithmetic.matmul(s, v) + carried)
    decayed_v = arithmetic.round(v * powers(gammas, n - 1 - pos, c)[..., None])
    after = arithmetic.matmul(np.swapaxes(k, -1, -2), decayed_v) + powers(gammas, n, c)[:, None, None] * state
    return out, after


def recurrent(p: Problem, arithmetic: Arithmetic = EXACT):
    """One position at a time: ``S_n = g S_(n-1) + outer(k_n, v_n)``, ``out[n] = scale q_n S_n``."""
    c = arithmetic.compute
    q, k, v, state = (x.astype(c) for x in (p.q, p.k, p.v, p.state))
    gamma = p.gammas.astype(c)[:, None, None]
    b, h, n, d_v = v.shape
    out = np.full((b, h, n, d_v), np.nan, dtype=c)  # a position the loop forgets shows as NaN
    for t in range(n):
        state = gamma * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        out[:, :, t] = arithmetic.round(arithmetic.matmul(q[:, :, t, None], state)[:, :, 0] * c(p.scale))
    return out, state


def chunkwise(p: Problem, chunk_size: int, arithmetic: Arithmetic = EXACT):
    """Blocks of ``chunk_size`` positions (the last may be shorter), each starting from the carried state."""
    b, h, n, d_v = p.v.shape
    out = np.full((b, h, n, d_v), np.nan, dtype=arithmetic.compute)
    state = p.state
    for start in range(0, n, chunk_size):
        run = slice(start, min(start + chunk_size, n))
        out[:, :, run], state = block(
            p.q[:, :, run], p.k[:, :, run], p.v[:, :, run], p.gammas, p.scale, state, arithmetic
        )
    return out, np.asarray(state).astype(arithmetic.compute)


def prepare(q, k, v, *, gammas, scale=None, initial_state=None) -> Problem:
    """Validate the arguments of ``retention``; errors name the argument and what was expected."""
    q, k, v = (check.float_array(name, x, ndim=4) for name, x in (("q", q), ("k", k), ("v", v)))
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape (B, H, N, D_k) = {q.shape}; got {k.shape}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape (B, H, N, D_v) with (B, H, N) = {q.shape[:3]}; got {v.shape}")
    b, h, _, d_k = q.shape
    if d_k < 1 or h < 1:
        raise ValueError(f"q needs H >= 1 heads and D_k >= 1; got q of shape {q.shape}")
    given = np.asarray(gammas).dtype
    gammas = check.float_array("gammas", gammas, ndim=1)
    if given not in (np.float32, np.float64):
        raise TypeError(
            f"gammas must be a float32 or float64 array (decays are never rounded to a 16-bit dtype); got dtype {given}"
        )
    if gammas.shape != (h,):
        raise ValueError(f"gammas must have shape (H,) = ({h},), one decay per head; got {gammas.shape}")
    outside = ~((gammas >= 0) & (gammas <= 1))  # NaN is outside too
    if outside.any():
        at = int(np.argmax(outside))
        raise ValueError(f"gammas must lie in [0, 1]; got gammas[{at}] = {gammas[at]}")
    scale = 1.0 / math.sqrt(d_k) if scale is None else check.finite_float("scale", scale)
    state_shape = (b, h, d_k, v.shape[3])
    if initial_state is None:
        state = np.zeros(state_shape)
    else:
        state = check.float_array("initial_state", initial_state, ndim=4)
        if state.shape != state_shape:
            raise ValueError(f"initial_state must have shape (B, H, D_k, D_v) = {state_shape}; got {state.shape}")
    return Problem(q, k, v, gammas, scale, state)
