"""The tolerance policy of :mod:`attnspec.tolerance`, computed for one case.

At 16 and 32 bits the bound is relative to a naive implementation in the kernel's precision,
evaluated by the reference's own formula with an :class:`~attnspec.reference.arithmetic.Arithmetic`
that rounds every step to the dtype (float32 accumulation). At 64 bits it is a few ulps times
the error-propagation size of the case.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from attnspec import tolerance as policy
from attnspec.conformance.dtypes import eps, numpy_dtype
from attnspec.reference import multihead, relative
from attnspec.reference.arithmetic import Arithmetic
from attnspec.reference.sdpa import attend, prepare

EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Bound:
    """An allowed maximum absolute error, with the arithmetic that produced it."""

    value: float
    explanation: str

    def __str__(self) -> str:
        return f"{self.value:.3g} ({self.explanation})"


def naive_arithmetic(dtype: str) -> Arithmetic:
    return Arithmetic(compute=np.float32, storage=numpy_dtype(dtype), sequential=True)


def relative_bound(naive_error: float, scale: float, dtype: str, sensitivity: float = 0.0) -> Bound:
    """``NAIVE_FACTOR * naive_error`` plus the floor: two roundings of ``scale`` in the dtype, and
    ``SENSITIVITY_FACTOR`` times the case's measured sensitivity to float32 rounding."""
    floor = policy.FLOOR_EPS * eps(dtype) * scale + policy.SENSITIVITY_FACTOR * sensitivity
    value = policy.NAIVE_FACTOR * naive_error + floor
    return Bound(value, f"{policy.NAIVE_FACTOR:g} x naive {dtype} error {naive_error:.3g} + floor {floor:.3g}")


def float64_bound(size: float) -> Bound:
    value = policy.FLOAT64_EPS * EPS64 * size
    return Bound(value, f"{policy.FLOAT64_EPS:g} ulps x propagation size {size:.3g}")


def max_error(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[both] - b[both]).max(initial=0.0))


def finite_max(x: np.ndarray, at_least: float = 0.0) -> float:
    x = np.abs(np.asarray(x, dtype=np.float64))
    return float(max(x[np.isfinite(x)].max(initial=0.0), at_least))


def sdpa_bounds(q, k, v, options: dict, dtype: str, ref_out, ref_lse) -> tuple[Bound, Bound]:
    """``(output bound, LSE bound)`` for ``sdpa(q, k, v, **options)`` at ``dtype``."""
    vmax = finite_max(v, 1e-30)
    lse_scale = finite_max(ref_lse, 1.0)
    problem = prepare(q, k, v, **options)
    if dtype == "float64":
        size = _score_size(problem)
        return float64_bound(vmax * size), float64_bound(size + lse_scale)
    out, lse = attend(problem, range(problem.n_q), range(problem.n_k), naive_arithmetic(dtype))
    out_sens, lse_sens = rounding_sensitivity(problem, ref_out, ref_lse)
    return (relative_bound(max_error(out, ref_out), vmax, dtype, out_sens),
            relative_bound(max_error(lse, ref_lse), lse_scale, dtype, lse_sens))


def rounding_sensitivity(problem, ref_out, ref_lse, draws: int = 2) -> tuple[float, float]:
    """How far the exact result moves when float32 rounding perturbs its inputs.

    Every ``q`` element is perturbed by a random relative ``sqrt(D_qk) * eps(float32)``, every
    final score by ``eps(float32)`` and every ``v`` element by ``sqrt(N_k) * eps(float32)``: the size of the rounding error that a length-D dot
    product and a length-N_k weighted sum accumulate in float32, with high probability (Higham and
    Mary, 2019). The exact formula is evaluated on the perturbed inputs in float64, so this measures
    the case's own conditioning (a saturated softmax hides score errors; a flat one does not),
    independently of any BLAS library. Deterministic: the perturbations come from a fixed seed.
    """
    rng = np.random.default_rng(2019)
    unit = float(np.finfo(np.float32).eps)
    q_jitter = unit * np.sqrt(problem.q.shape[-1])
    v_jitter = unit * np.sqrt(max(problem.n_k, 1))
    out_sens = lse_sens = 0.0
    for _ in range(draws):
        score_jitter = unit * rng.uniform(-1, 1, (problem.batch, problem.h_q, problem.n_q, problem.n_k))
        perturbed = replace(problem, q=problem.q * (1 + q_jitter * rng.uniform(-1, 1, problem.q.shape)),
                            v=problem.v * (1 + v_jitter * rng.uniform(-1, 1, problem.v.shape)),
                            score_mods=problem.score_mods + (_rounded_score(score_jitter),))
        out, lse = attend(perturbed, range(problem.n_q), range(problem.n_k))
        out_sens, lse_sens = max(out_sens, max_error(out, ref_out)), max(lse_sens, max_error(lse, ref_lse))
    return out_sens, lse_sens


def _rounded_score(jitter: np.ndarray):
    """A score modifier that perturbs each final score by one float32 rounding (adding bias, scaling)."""

    def rounded_score(score, b, h, q_idx, kv_idx):
        return score * (1 + jitter[b, h, q_idx, kv_idx])

    return rounded_score


def _score_size(problem) -> float:
    """``D_qk * A + N_k + 1``: how far rounding in the dot products and sums can propagate."""
    b, h_q, n_q, d = problem.q.shape
    grouped = np.abs(problem.q).reshape(b, problem.h_kv, h_q // problem.h_kv, n_q, d)
    dots = grouped @ np.swapaxes(np.abs(problem.k), -1, -2)[:, :, None]
    additive = 0.0
    for mod in problem.score_mods:  # softcap, bias and ALiBi add at most their own magnitude
        additive += finite_max(mod(np.zeros((1, 1, 1, 1)), *_all_indices(problem)))
    a = abs(problem.scale) * finite_max(dots) + additive
    return d * a + problem.n_k + 1


def _all_indices(problem):
    return (np.arange(problem.batch)[:, None, None, None], np.arange(problem.h_q)[None, :, None, None],
            np.arange(problem.n_q)[None, None, :, None], np.arange(problem.n_k)[None, None, None, :])


def mha_bound(x_q, x_kv, weights: dict, options: dict, dtype: str, ref_out) -> Bound:
    """The bound for ``mha``: projections, attention and the output projection."""
    heads, kv_heads = weights["num_heads"], weights["num_kv_heads"]
    w_q, w_k, w_v, w_o = (np.asarray(weights[n], np.float64) for n in ("w_q", "w_k", "w_v", "w_o"))
    x_q, x_kv = np.asarray(x_q, np.float64), np.asarray(x_kv, np.float64)
    split = multihead.split_heads
    if dtype == "float64":
        d_model = x_q.shape[-1]
        q_abs, k_abs = split(np.abs(x_q) @ np.abs(w_q), heads), split(np.abs(x_kv) @ np.abs(w_k), kv_heads)
        v_abs = split(np.abs(x_kv) @ np.abs(w_v), kv_heads)
        problem = prepare(q_abs, k_abs, v_abs, **{**options, "softcap": None, "bias": None, "alibi_slopes": None})
        attention = finite_max(v_abs) * (_score_size(problem) + d_model)
        o_abs = finite_max(v_abs)
        size = attention * np.abs(w_o).sum(axis=0).max() + w_o.shape[0] * o_abs * np.abs(w_o).max()
        return float64_bound(size)
    arith = naive_arithmetic(dtype)
    f32 = np.float32
    q = split(arith.round(x_q.astype(f32) @ w_q.astype(f32)), heads)
    k = split(arith.round(x_kv.astype(f32) @ w_k.astype(f32)), kv_heads)
    v = split(arith.round(x_kv.astype(f32) @ w_v.astype(f32)), kv_heads)
    problem = prepare(q, k, v, **options)
    o, _ = attend(problem, range(problem.n_q), range(problem.n_k), arith)
    naive = arith.round(multihead.merge_heads(o).astype(f32) @ w_o.astype(f32))
    return relative_bound(max_error(naive, ref_out), finite_max(ref_out, 1e-30), dtype)




def positional_bound(ref, naive_fn, dtype: str, *, scale: float, propagation: float) -> Bound:
    """Element-wise encodings: relative to ``naive_fn(naive arithmetic)`` at 16/32 bits; at 64
    bits ``propagation`` (1 + the largest angle, for rotations) ulps of ``scale``."""
    if dtype == "float64":
        return float64_bound(scale * propagation)
    return relative_bound(max_error(naive_fn(naive_arithmetic(dtype)), ref), scale, dtype)


def rounding_bound(ref, dtype: str) -> Bound:
    """Values computed exactly and then stored: a couple of roundings of the largest one."""
    scale = finite_max(ref, 1e-30)
    if dtype == "float64":
        return float64_bound(scale)
    return Bound(policy.FLOOR_EPS * eps(dtype) * scale, f"{policy.FLOOR_EPS:g} eps({dtype}) x max|ref| {scale:.3g}")


def shaw_bound(q, k, v, kwargs: dict, dtype: str, ref) -> Bound:
    """Shaw's relative attention: like ``sdpa``, with the relative tables added to K and V."""
    rel_k, rel_v = (np.asarray(kwargs[n], np.float64) for n in ("rel_k", "rel_v"))
    vmax = finite_max(v, 1e-30) + finite_max(rel_v)
    if dtype == "float64":
        q, k = np.abs(np.asarray(q, np.float64)), np.abs(np.asarray(k, np.float64))
        d = q.shape[-1]
        a = finite_max(q @ np.swapaxes(k, -1, -2)) + finite_max(q @ np.abs(rel_k).T)
        return float64_bound(vmax * (d * a / np.sqrt(d) + k.shape[2] + 2 * kwargs["max_relative"] + 2))
    naive = relative.shaw(q, k, v, arithmetic=naive_arithmetic(dtype), **kwargs)
    return relative_bound(max_error(naive, ref), vmax, dtype)
