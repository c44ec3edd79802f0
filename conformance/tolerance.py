"""The tolerance policy of :mod:`attnspec.tolerance`, computed for one call: the engine.

:func:`policy_bounds` implements the policy once. At 16 and 32 bits the bound is relative to a
naive implementation in the kernel's precision, which is the reference itself evaluated with an
:class:`~attnspec.reference.arithmetic.Arithmetic` that rounds every step to the dtype (float32
accumulation): every reference function takes ``arithmetic=``. The floor's sensitivity term is
:func:`sensitivity`: the exact formula on inputs moved by float32-sized random perturbations,
each input's declared by a :class:`Jitter`. At 64 bits the bound is a few ulps times the
error-propagation size of the case, which each operation states.

An operation's bound is then a declaration (:func:`sdpa_bounds` here, the other families in
:mod:`.bounds`): its reference call, the scale of its floor, which inputs get which jitter, and
its float64 propagation size. The analyses that differ (NSA, LSH, routing margins, the Performer
features' estimator) are in :mod:`.hand_bounds`, each saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, partial

import numpy as np

from attnspec import tolerance as policy
from attnspec.conformance.dtypes import eps, numpy_dtype
from attnspec.reference import multihead, relative
from attnspec.reference.arithmetic import Arithmetic
from attnspec.reference.sdpa import attend, prepare, sdpa
from attnspec.tolerance import QuantisedClass

EPS64 = float(np.finfo(np.float64).eps)
UNIT32 = float(np.finfo(np.float32).eps)
#: The seed of the sensitivity's perturbations: the bounds are deterministic.
SEED = 2019


@dataclass(frozen=True)
class Bound:
    """An allowed maximum absolute error, with the arithmetic that produced it.

    ``quantised``, where an operation defines one, gives the bound under a quantised tolerance
    class (:func:`attnspec.tolerance.quantised_tolerance`); it is computed only when a run selects
    a class, since it evaluates the quantised arithmetic.
    """

    value: float
    explanation: str
    quantised: Callable[[QuantisedClass], Bound] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.value:.3g} ({self.explanation})"

    def scaled(self, factor: float, why: str) -> Bound:
        """``factor`` times this bound, its quantised counterpart scaled alike (two results compared
        with each other, each with its own error)."""
        widened = self.quantised
        return Bound(
            factor * self.value,
            f"{why} {self}",
            None if widened is None else lambda cls: widened(cls).scaled(factor, why),
        )


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


@dataclass(frozen=True)
class Jitter:
    """A float32-sized random perturbation of one input, ``u`` uniform in ``[-1, 1]`` per element.

    Relative (the default): ``x * (1 + size * eps32 * u)``, with ``size`` the rounding-error size of
    the reduction that produces or consumes ``x`` (``sqrt(length)``: the probabilistic size of a
    float32 sum, Higham and Mary 2019). Absolute: ``x + size * eps32 * u``, with ``size`` an array
    of magnitudes, for an input whose rounding is relative to something other than itself (an
    exponent's argument after a shift).
    """

    size: float | np.ndarray = 1.0
    absolute: bool = False
    #: What ``size`` counts: float32 roundings, or (quantised classes) 1, ``size`` being the amount itself.
    unit: float = UNIT32

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.uniform(-1, 1, np.shape(x))
        x = np.asarray(x, np.float64)
        return x + self.size * self.unit * u if self.absolute else x * (1 + self.size * self.unit * u)


def sensitivity(
    exact: Callable, jittered: Sequence[tuple[np.ndarray, Jitter]], refs: tuple, draws: int = 2
) -> tuple[float, ...]:
    """How far ``exact(*inputs)`` moves from ``refs`` when float32 rounding perturbs its inputs.

    ``jittered`` lists ``exact``'s arguments in order, each with its :class:`Jitter`; the largest
    error over ``draws`` draws, per output. The exact formula is evaluated in float64 on the
    perturbed inputs, so this measures the case's own conditioning (a saturated softmax hides score
    errors; a flat one does not), independently of any BLAS library. Deterministic: the
    perturbations come from a fixed seed, drawn in the order of ``jittered``.
    """
    rng = np.random.default_rng(SEED)
    worst = [0.0] * len(refs)
    for _ in range(draws):
        outs = _outputs(exact(*(jitter.apply(x, rng) for x, jitter in jittered)))
        worst = [max(w, max_error(out, ref)) for w, out, ref in zip(worst, outs, refs, strict=True)]
    return tuple(worst)


def policy_bounds(
    dtype: str,
    refs: tuple,
    scales: Sequence[float],
    *,
    reference: Callable,
    sizes: Callable[[], Sequence[float]],
    exact: Callable | None = None,
    jitters: Sequence[tuple[np.ndarray, Jitter]] = (),
    extra_sensitivity: Callable[[], Sequence[float]] = tuple,
) -> tuple[Bound, ...]:
    """The policy's bound for each output ``refs[i]`` of one call (``refs``: the exact outputs).

    At 64 bits ``FLOAT64_EPS`` ulps of ``sizes()[i]``. At 16/32 bits ``NAIVE_FACTOR`` times the
    error of ``reference(arithmetic=naive arithmetic)`` (the reference call in the dtype) plus the
    floor on ``scales[i]``, whose sensitivity term is the larger of :func:`sensitivity` of ``exact``
    to ``jitters`` and ``extra_sensitivity()[i]`` where an operation declares one (the exact
    result's error with operands a kernel may store in the dtype, where the naive run's own
    rounding of them is one draw of luck; an analytic estimate).
    """
    if dtype == "float64":
        return tuple(float64_bound(size) for size in sizes())
    naive = _outputs(reference(arithmetic=naive_arithmetic(dtype)))
    sens = sensitivity(exact, jitters, refs) if exact is not None else (0.0,) * len(refs)
    extra = (tuple(extra_sensitivity()) + (0.0,) * len(refs))[: len(refs)]
    return tuple(
        relative_bound(max_error(n, ref), scale, dtype, max(s, e))
        for n, ref, scale, s, e in zip(naive, refs, scales, sens, extra, strict=True)
    )


def _outputs(result) -> tuple:
    return tuple(result) if isinstance(result, tuple) else (result,)


def sdpa_bounds(q, k, v, options: dict, dtype: str, ref_out, ref_lse) -> tuple[Bound, Bound]:
    """``(output bound, LSE bound)`` for ``sdpa(q, k, v, **options)`` at ``dtype``.

    Jitters: every final score by ``eps(float32)`` (one rounding after scale, bias, softcap), every
    ``q`` element by ``sqrt(D_qk)`` (the dot products) and every ``v`` element by ``sqrt(N_k)``
    (the weighted sum). Floors: ``max|v|`` for the output, ``max(1, max|lse|)`` for the LSE.
    """
    vmax, lse_scale = finite_max(v, 1e-30), finite_max(ref_lse, 1.0)
    problem = prepare(q, k, v, **options)

    def sizes():
        size = score_size(problem)
        return vmax * size, size + lse_scale

    def exact(score_factor, q, v):
        scored = replace(problem, q=q, v=v, score_mods=problem.score_mods + (scaled_score(score_factor),))
        return attend(scored, range(problem.n_q), range(problem.n_k))

    scores = np.ones((problem.batch, problem.h_q, problem.n_q, problem.n_k))
    jitters = (
        (scores, Jitter()),
        (problem.q, Jitter(np.sqrt(problem.q.shape[-1]))),
        (problem.v, Jitter(np.sqrt(max(problem.n_k, 1)))),
    )
    bounds = policy_bounds(
        dtype,
        (ref_out, ref_lse),
        (vmax, lse_scale),
        sizes=sizes,
        exact=exact,
        jitters=jitters,
        reference=partial(sdpa, q, k, v, **options, return_lse=True),
    )

    def quantised(cls: QuantisedClass) -> tuple[Bound, ...]:
        from attnspec.conformance.quantised import quantised_sdpa_bounds  # it builds on this module

        return quantised_sdpa_bounds(cls, problem, dtype, (ref_out, ref_lse), bounds)

    return with_quantised(bounds, quantised)


def with_quantised(bounds: tuple[Bound, ...], quantised: Callable[[QuantisedClass], tuple[Bound, ...]]) -> tuple:
    """``bounds``, each able to give its counterpart under a quantised class; ``quantised(cls)``
    gives them all and runs at most once per class, when a comparison asks for one."""
    once = cache(quantised)
    return tuple(replace(b, quantised=partial(_nth_of, once, i)) for i, b in enumerate(bounds))


def _nth_of(bounds: Callable[[QuantisedClass], tuple[Bound, ...]], i: int, cls: QuantisedClass) -> Bound:
    return bounds(cls)[i]


def scaled_score(factor: np.ndarray):
    """A score modifier that multiplies each final score by its factor (one float32 rounding)."""

    def scaled_score(score, b, h, q_idx, kv_idx):
        return score * factor[b, h, q_idx, kv_idx]

    return scaled_score


def score_size(problem) -> float:
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
    return (
        np.arange(problem.batch)[:, None, None, None],
        np.arange(problem.h_q)[None, :, None, None],
        np.arange(problem.n_q)[None, None, :, None],
        np.arange(problem.n_k)[None, None, None, :],
    )


def mha_bound(x_q, x_kv, weights: dict, options: dict, dtype: str, ref_out) -> Bound:
    """The bound for ``mha``: projections, attention and the output projection; floor ``max|out|``."""
    return policy_bounds(
        dtype,
        (ref_out,),
        (finite_max(ref_out, 1e-30),),
        reference=partial(multihead.mha, x_q, x_kv, **weights, **options),
        sizes=lambda: (_mha_size(x_q, x_kv, weights, options),),
    )[0]


def _mha_size(x_q, x_kv, weights: dict, options: dict) -> float:
    """The attention's propagation size on the projections' absolute values, through ``|W_O|``."""
    heads, kv_heads = weights["num_heads"], weights["num_kv_heads"]
    w_q, w_k, w_v, w_o = (np.abs(np.asarray(weights[n], np.float64)) for n in ("w_q", "w_k", "w_v", "w_o"))
    x_q, x_kv = np.abs(np.asarray(x_q, np.float64)), np.abs(np.asarray(x_kv, np.float64))
    split = multihead.split_heads
    q_abs, k_abs, v_abs = split(x_q @ w_q, heads), split(x_kv @ w_k, kv_heads), split(x_kv @ w_v, kv_heads)
    problem = prepare(q_abs, k_abs, v_abs, **{**options, "softcap": None, "bias": None, "alibi_slopes": None})
    attention = finite_max(v_abs) * (score_size(problem) + x_q.shape[-1])
    return attention * w_o.sum(axis=0).max() + w_o.shape[0] * finite_max(v_abs) * w_o.max()


def positional_bound(ref, naive_fn, dtype: str, *, scale: float, propagation: float) -> Bound:
    """Element-wise encodings, ``naive_fn(arithmetic)`` their reference call: floor ``scale``; at 64
    bits ``propagation`` (1 + the largest angle, for rotations) ulps of ``scale``."""
    return policy_bounds(
        dtype, (ref,), (scale,), reference=lambda arithmetic: naive_fn(arithmetic), sizes=lambda: (scale * propagation,)
    )[0]


def rounding_bound(ref, dtype: str) -> Bound:
    """Values computed exactly and then stored: no arithmetic error of their own, so the floor alone
    (at 64 bits, the ulps of the largest one)."""
    scale = finite_max(ref, 1e-30)
    return float64_bound(scale) if dtype == "float64" else relative_bound(0.0, scale, dtype)


def shaw_bound(q, k, v, kwargs: dict, dtype: str, ref) -> Bound:
    """Shaw's relative attention: like ``sdpa``, with the relative tables added to K and V."""
    vmax = finite_max(v, 1e-30) + finite_max(np.asarray(kwargs["rel_v"], np.float64))

    def sizes():
        q_abs, k_abs, rel_k = (np.abs(np.asarray(x, np.float64)) for x in (q, k, kwargs["rel_k"]))
        d = q_abs.shape[-1]
        a = finite_max(q_abs @ np.swapaxes(k_abs, -1, -2)) + finite_max(q_abs @ rel_k.T)
        return (vmax * (d * a / np.sqrt(d) + k_abs.shape[2] + 2 * kwargs["max_relative"] + 2),)

    return policy_bounds(dtype, (ref,), (vmax,), reference=partial(relative.shaw, q, k, v, **kwargs), sizes=sizes)[0]
