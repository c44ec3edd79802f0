"""The quantised tolerance classes of :func:`attnspec.tolerance.quantised_tolerance`, computed for one call.

:func:`quantised_sdpa_bounds` is the class's bound for an ``sdpa`` comparison: the naive quantised
run (:func:`naive_quantised`: ``q`` and ``k`` quantised per block to int8, ``P`` and ``V`` in the
class's format) and the sensitivity to perturbations of half a quantisation step
(:func:`quantisation_jitters`), never below the 16-bit bound. :class:`Measured` keeps, per test,
the comparisons' errors against both bounds: the 16-bit verdict of a run under a class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import ml_dtypes
import numpy as np

from attnspec import tolerance as policy
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.tolerance import Bound, Jitter, finite_max, max_error, sensitivity
from attnspec.reference.arithmetic import Arithmetic
from attnspec.reference.sdpa import Problem, attend, scores, softmax_average, visible
from attnspec.tolerance import INT8_LEVELS, QuantisedClass

#: The formats ``P`` and ``V`` may be multiplied in.
PV_FORMATS = {"float16": np.float16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn}


def block_steps(x: np.ndarray, block: int) -> np.ndarray:
    """``(B, H, N, 1)``: the int8 step of the block of ``block`` rows (of one head) each row is in:
    ``max|x over the block| / INT8_LEVELS``."""
    b, h, n, d = x.shape
    padded = np.pad(np.abs(np.asarray(x, np.float64)), ((0, 0), (0, 0), (0, (-n) % block), (0, 0)))
    absmax = padded.reshape(b, h, -1, block * d).max(axis=-1)
    return np.repeat(absmax / INT8_LEVELS, block, axis=2)[:, :, :n, None]


def quantised(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` quantised to int8 per block and dequantised: ``step * round(x / step)``, as float64."""
    steps = block_steps(x, block)
    safe = np.where(steps > 0, steps, 1.0)
    return np.rint(np.asarray(x, np.float64) / safe) * steps


def in_pv_format(x: np.ndarray, cls: QuantisedClass) -> np.ndarray:
    return np.asarray(x, np.float64).astype(PV_FORMATS[cls.pv_format]).astype(np.float64)


def naive_quantised(problem: Problem, cls: QuantisedClass, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(out, lse)`` of the class's arithmetic done plainly: ``q`` and ``k`` quantised per block, the
    scores from the dequantised values in float64, the softmax with its row maximum subtracted, ``P``,
    ``V`` and the sum of ``P V`` rounded to the PV format, the output rounded to ``dtype``."""
    v = in_pv_format(problem.v, cls)
    stored = replace(problem, q=quantised(problem.q, cls.q_block), k=quantised(problem.k, cls.k_block), v=v)
    rows, cols = range(problem.n_q), range(problem.n_k)
    pv = Arithmetic(storage=PV_FORMATS[cls.pv_format])  # rounds P and the output; scores stay float64
    out, lse = softmax_average(scores(stored, rows, cols), visible(stored, rows, cols), v, pv)
    return rounded(out, dtype).astype(np.float64), lse


def quantisation_jitters(problem: Problem, cls: QuantisedClass) -> tuple:
    """``q`` and ``k`` by up to half their block's step (absolute), ``v`` by the PV format's unit
    roundoff (relative): the quantisation error in the random-rounding model."""
    u = float(ml_dtypes.finfo(PV_FORMATS[cls.pv_format]).eps) / 2
    return (
        (problem.q, Jitter(block_steps(problem.q, cls.q_block) / 2, absolute=True, unit=1.0)),
        (problem.k, Jitter(block_steps(problem.k, cls.k_block) / 2, absolute=True, unit=1.0)),
        (problem.v, Jitter(u, unit=1.0)),
    )


def quantised_sdpa_bounds(
    cls: QuantisedClass, problem: Problem, dtype: str, refs: tuple, bounds16: tuple[Bound, ...]
) -> tuple[Bound, ...]:
    """The class's ``(output bound, LSE bound)`` for one ``sdpa`` call; ``refs``: the exact
    ``(out, lse)``; ``bounds16``: the 16-bit bounds, below which the class never goes."""
    rows, cols = range(problem.n_q), range(problem.n_k)

    def exact(q, k, v):
        return attend(replace(problem, q=q, k=k, v=v), rows, cols)

    errors = [max_error(n, ref) for n, ref in zip(naive_quantised(problem, cls, dtype), refs, strict=True)]
    sens = sensitivity(exact, quantisation_jitters(problem, cls), refs, draws=policy.QUANTISED_DRAWS)
    eps_pv = float(ml_dtypes.finfo(PV_FORMATS[cls.pv_format]).eps)
    scales = (finite_max(problem.v, 1e-30), finite_max(refs[1], 1.0))  # max|v|; max(1, max|lse|)
    out = []
    for error, s, scale, b16 in zip(errors, sens, scales, bounds16, strict=True):
        floor = policy.FLOOR_EPS * eps_pv * scale + policy.SENSITIVITY_FACTOR * s
        value = policy.NAIVE_FACTOR * error + floor
        why = f"{cls.name} class: {policy.NAIVE_FACTOR:g} x naive {cls.name} error {error:.3g} + floor {floor:.3g}"
        out.append(b16 if b16.value >= value else Bound(value, why))  # never tighter than 16 bits
    return tuple(out)


@dataclass
class Measured:
    """One test's comparisons under a quantised class: how many exceeded their 16-bit bound, and
    the worst against each bound (the 16-bit verdict of a test that ran against the class's)."""

    comparisons: int = 0
    over16: int = 0
    worst16: dict = field(default_factory=dict)
    worst: dict = field(default_factory=dict)

    def add(self, error: float, bound16: float, bound: float, message16) -> None:
        """One comparison; ``message16()`` says what a 16-bit failure of it would (asked for the worst only)."""
        self.comparisons += 1
        self.over16 += error > bound16
        ratio16, ratio = error / bound16 if bound16 > 0 else np.inf, error / bound if bound > 0 else np.inf
        entry = {"error": error, "bound16": bound16, "bound": bound, "ratio16": ratio16, "ratio": ratio}
        if ratio16 > self.worst16.get("ratio16", -1.0):
            self.worst16 = {**entry, "message": message16()}
        if ratio > self.worst.get("ratio", -1.0):
            self.worst = entry

    def summary(self, cls: QuantisedClass) -> dict:
        return {"class": cls.name, "comparisons": self.comparisons, "over16": self.over16,
                "worst16": self.worst16, "worst": self.worst}  # fmt: skip
