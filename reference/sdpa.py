"""Scaled dot-product attention in float64 (clauses in :mod:`attnspec.sdpa`).

The computation is split in three steps that the tiled reference (:mod:`.flash`) reuses on
tiles: :func:`scores` (scale, softcap, bias, ALiBi), :func:`visible` (every visibility rule)
and :func:`softmax_average`. An :class:`Arithmetic` says in which precision the steps run; the
oracle is exact float64, and the conformance suite evaluates the same formula in a kernel's
dtype to obtain the naive error its tolerance policy is relative to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference import masks
from attnspec.reference.arithmetic import EXACT, Arithmetic

CAUSAL = check.CAUSAL
OPTIONS = ("scale", "causal", "window", "window_align", "mask", "bias", "softcap", "alibi_slopes", "q_lens", "kv_lens")


@dataclass(frozen=True)
class Problem:
    """Validated inputs of one attention call, with its rules as index functions."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    scale: float
    causal: str | None
    window: tuple[int, int] | None
    window_align: str  # "bottom_right" (sdpa.window) or "top_left" (sdpa.window.top_left)
    q_lens: np.ndarray
    kv_lens: np.ndarray
    mask_mod: object
    score_mods: tuple

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def h_q(self) -> int:
        return self.q.shape[1]

    @property
    def h_kv(self) -> int:
        return self.k.shape[1]

    @property
    def n_q(self) -> int:
        return self.q.shape[2]

    @property
    def n_k(self) -> int:
        return self.k.shape[2]


@reference("sdpa")
def sdpa(q, k, v, *, return_lse: bool = False, arithmetic: Arithmetic = EXACT, **options):
    """Clause ``sdpa``: attention output ``(B, H_q, N_q, D_v)``, and the LSE if ``return_lse``.

    ``q`` ``(B, H_q, N_q, D_qk)``, ``k`` ``(B, H_kv, N_k, D_qk)``, ``v`` ``(B, H_kv, N_k, D_v)``.
    Options: ``scale``, ``causal`` (None, "top_left", "bottom_right"), ``window`` ((left, right)),
    ``mask`` (bool), ``bias`` (float), ``softcap``, ``alibi_slopes``, ``q_lens``, ``kv_lens``.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"sdpa got unknown option(s) {unknown}; the options are {', '.join(OPTIONS)}")
    problem = prepare(q, k, v, **options)
    out, lse = attend(problem, range(problem.n_q), range(problem.n_k), arithmetic)
    return (out, lse) if return_lse else out


def attend(problem: Problem, rows: range, cols: range, arithmetic: Arithmetic = EXACT):
    """Normalised attention of queries ``rows`` over keys ``cols`` only: ``(out, lse)``."""
    scores_shape = (problem.batch, problem.h_q, len(rows), len(cols))
    check.fits_in_memory("the float64 reference attention", ("scores (B, H_q, N_q, N_k)", scores_shape, 8))
    s = scores(problem, rows, cols, arithmetic)
    vis = visible(problem, rows, cols)
    v = problem.v[:, :, cols.start : cols.stop].astype(arithmetic.compute)
    return softmax_average(s, vis, v, arithmetic)


def scores(problem: Problem, rows: range, cols: range, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Scores ``(B, H_q, len(rows), len(cols))`` after scale, softcap, bias and ALiBi."""
    q = problem.q[:, :, rows.start : rows.stop].astype(arithmetic.compute)
    k = problem.k[:, :, cols.start : cols.stop].astype(arithmetic.compute)
    b, h_q, n_rows, d = q.shape
    grouped = q.reshape(b, problem.h_kv, h_q // problem.h_kv, n_rows, d)
    dots = arithmetic.matmul(grouped, np.swapaxes(k, -1, -2)[:, :, None]).reshape(b, h_q, n_rows, len(cols))
    s = arithmetic.round(dots * arithmetic.compute(problem.scale))
    for mod in problem.score_mods:
        s = arithmetic.round(masks.evaluate(mod, (b, h_q), rows, cols, s))
    return s


def visible(problem: Problem, rows: range, cols: range) -> np.ndarray:
    """Boolean ``(B, H_q or 1, len(rows), len(cols))``: True where the key is visible."""
    return masks.evaluate(problem.mask_mod, (problem.batch, problem.h_q), rows, cols)


def softmax_average(s: np.ndarray, vis: np.ndarray, v: np.ndarray, arithmetic: Arithmetic = EXACT):
    """Softmax of ``s`` over the visible keys, then the weighted average of ``v``: ``(out, lse)``.

    The row maximum is subtracted before exponentiating; a row without visible keys gives
    ``out = 0`` and ``lse = -inf`` (clause ``sdpa.fully_masked``).
    """
    s = np.where(vis, s, -np.inf)
    if s.shape[-1] == 0:
        return np.zeros(s.shape[:-1] + v.shape[-1:], arithmetic.compute), np.full(s.shape[:-1], -np.inf)
    row_max = s.max(axis=-1, keepdims=True)
    row_max = np.where(np.isneginf(row_max), 0.0, row_max)
    e = np.exp(s - row_max)
    total = e.sum(axis=-1, keepdims=True)
    has_key = total > 0
    safe_total = np.where(has_key, total, 1.0)
    p = arithmetic.round(e / safe_total)
    lse = np.where(has_key, row_max + np.log(safe_total), -np.inf)[..., 0]
    return arithmetic.round(weighted_values(p, vis, v, arithmetic)), lse


def weighted_values(weights: np.ndarray, vis: np.ndarray, v: np.ndarray, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """``weights @ v`` per head with GQA grouping; only visible keys' values are read.

    A non-finite value at an invisible key does not leak (it is never multiplied, not even by
    zero); one at a visible key makes the row NaN.
    """
    b, h_q, n_rows, n_cols = weights.shape
    h_kv = v.shape[1]
    finite = np.isfinite(v)
    clean = np.where(finite, v, 0.0)
    grouped = weights.reshape(b, h_kv, h_q // h_kv, n_rows, n_cols)
    out = arithmetic.matmul(grouped, clean[:, :, None]).reshape(b, h_q, n_rows, v.shape[-1])
    bad_key = np.repeat(~finite.all(axis=-1), h_q // h_kv, axis=1)[:, :, None, :]
    leaks = (vis & bad_key).any(axis=-1)
    return np.where(leaks[..., None], np.nan, out)


def prepare(
    q,
    k,
    v,
    *,
    scale=None,
    causal=None,
    window=None,
    window_align=None,
    mask=None,
    bias=None,
    softcap=None,
    alibi_slopes=None,
    q_lens=None,
    kv_lens=None,
) -> Problem:
    """Validate the arguments of ``sdpa`` and build its visibility rule and score modifiers."""
    q, k, v = (check.float_array(name, x, ndim=4) for name, x in (("q", q), ("k", k), ("v", v)))
    b, h_q, n_q, d_qk = q.shape
    h_kv, n_k = check.kv_shapes(q, k, v)
    scale = 1.0 / math.sqrt(d_qk) if scale is None else check.finite_float("scale", scale)
    causal = check.causal(causal)
    window = check.window(window)
    window_align = check.window_align(window_align)
    q_lens = np.full(b, n_q) if q_lens is None else check.int_array("q_lens", q_lens, shape=(b,), low=0, high=n_q)
    kv_lens = np.full(b, n_k) if kv_lens is None else check.int_array("kv_lens", kv_lens, shape=(b,), low=0, high=n_k)
    offsets = kv_lens - q_lens
    full = (b, h_q, n_q, n_k)
    rules = [masks.padding(q_lens, kv_lens)]
    if causal == "top_left":
        rules.append(masks.causal_top_left())
    elif causal == "bottom_right":
        rules.append(masks.causal_bottom_right(offsets))
    if window is not None:
        rules.append(masks.sliding_window(*window, offsets if window_align == "bottom_right" else 0 * offsets))
    if mask is not None:
        rules.append(masks.from_array(check.mask(mask, full)))
    mods = []
    if softcap is not None:
        mods.append(masks.softcap(check.positive_float("softcap", softcap)))
    if bias is not None:
        mods.append(masks.additive_bias(check.bias(bias, full)))
    if alibi_slopes is not None:
        mods.append(masks.alibi(check.alibi_slopes(alibi_slopes, b, h_q), offsets))
    rule = masks.and_masks(*rules)
    return Problem(q, k, v, scale, causal, window, window_align, q_lens, kv_lens, rule, tuple(mods))
