"""Retention cases, their strategy, and the tolerance of the retention forms.

A :class:`RetentionCase` prints as valid Python and makes its arrays from a seed, already
rounded to the dtype under test, so a failure reproduces from its message. The decays are host
values of their own dtype (:func:`gamma_dtype`), never rounded to a 16-bit input dtype.
The bound follows :mod:`attnspec.tolerance`: at 16/32 bits three times the error of the form
under test evaluated naively in the dtype, plus a floor; at 64 bits a few ulps of the sum of the
absolute terms, each weighted by how far rounding can propagate into it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from hypothesis import strategies as st

from attnspec.conformance.dtypes import rounded
from attnspec.conformance.strategies import lengths
from attnspec.conformance.target import current
from attnspec.conformance.tolerance import Bound, finite_max, float64_bound, max_error, naive_arithmetic, relative_bound
from attnspec.reference.retention import FORMS, block, decay_powers, prepare, retention

#: Decays at the edges: none kept, underflow within a few steps, the paper's first heads, none lost.
GAMMAS = (0.0, 1e-3, 0.5, 0.9, 0.96875, 1 - 2.0**-9, 1.0)
DIMS = (1, 3, 8, 16, 32)


@dataclass(frozen=True)
class RetentionCase:
    """One ``retention`` call: shapes, decays, form, and the seed of the arrays."""

    batch: int = 1
    heads: int = 1
    n: int = 1
    d_k: int = 8
    d_v: int = 8
    gammas: tuple[float, ...] = (0.9,)
    form: str = "parallel"
    chunk_size: int | None = None
    scale: float | None = None
    initial_state: bool = False
    seed: int = 0

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis prints falsifying examples this way
        printer.text(repr(self))

    def with_(self, **changes) -> RetentionCase:
        return replace(self, **changes)

    def inputs(self, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """``(q, k, v, kwargs)`` in ``dtype``; ``kwargs`` holds gammas, scale, initial_state, form, chunk_size."""
        rng = np.random.default_rng(self.seed)
        q = rounded(rng.standard_normal((self.batch, self.heads, self.n, self.d_k)), dtype)
        k = rounded(rng.standard_normal((self.batch, self.heads, self.n, self.d_k)), dtype)
        v = rounded(rng.standard_normal((self.batch, self.heads, self.n, self.d_v)), dtype)
        state = rng.standard_normal((self.batch, self.heads, self.d_k, self.d_v))
        kwargs = dict(gammas=np.asarray(self.gammas, dtype=gamma_dtype(dtype)), scale=self.scale,
                      initial_state=rounded(state, dtype) if self.initial_state else None,
                      form=self.form, chunk_size=self.chunk_size)
        return q, k, v, kwargs


def gamma_dtype(dtype: str) -> type:
    """The dtype of ``gammas`` passed with inputs of ``dtype``: float64 with float64, else float32.

    Clause ``retention.parallel``: the decays are float32 or float64 whatever the input dtype. In
    bfloat16 every decay from ``1 - 2^-9`` up would round to 1 (the paper's heads 4 and above), in
    float16 from ``1 - 2^-12`` up: a test with rounded decays could not see a kernel that loses them.
    """
    return np.float64 if dtype == "float64" else np.float32


def chunk_sizes(n: int) -> st.SearchStrategy[int]:
    """1, small odd sizes, powers of two, and sizes that do not divide ``n`` or exceed it."""
    return st.sampled_from(sorted({1, 2, 3, 5, 16, 64, max(1, n - 1), n + 1}))


@st.composite
def retention_cases(draw, *, form: str | None = "parallel", initial_state: bool = False, max_len: int | None = None):
    """A case of ``form`` (None: any form); chunkwise cases draw a chunk size against the drawn length."""
    form = form or draw(st.sampled_from(FORMS))
    top = current().backend.max_head_dim or max(DIMS)
    dims = st.sampled_from([d for d in DIMS if d <= top])
    heads = draw(st.integers(1, 3))
    n = draw(lengths(max_len))  # N = 0 is a pinned example of the tests
    d_k = draw(dims)
    gamma = st.one_of(st.sampled_from(GAMMAS), st.floats(0.0, 1.0))
    return RetentionCase(batch=draw(st.integers(1, 2)), heads=heads, n=n, d_k=d_k,
                         d_v=draw(st.one_of(st.just(d_k), dims)),
                         gammas=tuple(draw(st.lists(gamma, min_size=heads, max_size=heads))), form=form,
                         chunk_size=draw(chunk_sizes(n)) if form == "chunkwise" else None,
                         scale=draw(st.sampled_from([None, 0.3, 1.7])), initial_state=initial_state,
                         seed=draw(st.integers(0, 2**32 - 1)))


def retention_bounds(q, k, v, kwargs: dict, dtype: str, ref_out, ref_state) -> tuple[Bound, Bound]:
    """``(output bound, state bound)`` for ``retention(q, k, v, **kwargs)`` at ``dtype``.

    At 16/32 bits the naive error is that of the form named in ``kwargs`` (a recurrent kernel is
    held to a naive recurrence, a chunkwise one to naive chunks), relative to ``max|ref|``. The
    naive run applies ``scale`` to the scores, as the formula does; the clause lets a kernel fold it
    into ``q`` (flash-linear-attention) or ``k`` (torchscale) instead, which in a 16-bit dtype adds
    one rounding of the scaled operand, ``q * scale`` or ``k * scale`` stored in the dtype. The
    naive run does not make that rounding, so the sensitivity term (:func:`rounding_sensitivity`)
    includes it, evaluated exactly: the exact output on ``q * scale`` (or ``k * scale``) rounded to
    the dtype, with ``scale = 1``. That is the error of an exact kernel that folds the scale, so a
    folding kernel is held to its own arithmetic error beside it, never more.
    """
    options = {n: kwargs.get(n) for n in ("gammas", "scale", "initial_state")}
    problem = prepare(q, k, v, **options)
    if dtype == "float64":
        out_size, state_size = propagation_sizes(problem)
        return float64_bound(out_size), float64_bound(state_size)
    naive_out, naive_state = retention(q, k, v, **kwargs, return_state=True, arithmetic=naive_arithmetic(dtype))
    out_sens, state_sens = rounding_sensitivity(problem, ref_out, ref_state, dtype)
    return (relative_bound(max_error(naive_out, ref_out), finite_max(ref_out, 1e-30), dtype, out_sens),
            relative_bound(max_error(naive_state, ref_state), finite_max(ref_state, 1e-30), dtype, state_sens))


def propagation_sizes(problem) -> tuple[float, float]:
    """The float64 error sizes of the output and the final state: weighted sums of absolute terms.

    Each term ``g^e scale (q_n . k_m) v_m`` of an output, or ``g^e outer(k_m, v_m)`` of the state,
    carries ``D_k + N + 4`` roundings (its dot product, the sum over positions, scale and decay
    products) plus ``e (1 + |log g|)`` for its decay: ``e`` products in a recurrence, or the
    relative error ``e |log g| eps`` of ``exp(e log g)``. The sizes are the largest such weighted
    sums, evaluated by the parallel form on absolute values with the weights folded into the decay.
    """
    d_k, n = problem.q.shape[-1], problem.q.shape[2]
    base = d_k + n + 4

    def weighted(gammas, e, dtype):
        e = np.asarray(e, dtype=dtype)
        log_g = np.abs(np.log(np.where(gammas > 0, gammas, 1.0))).reshape((-1,) + (1,) * e.ndim)
        return decay_powers(gammas, e, dtype) * (base + e * (1 + log_g))

    out, state = block(np.abs(problem.q), np.abs(problem.k), np.abs(problem.v), problem.gammas,
                       abs(problem.scale), np.abs(problem.state), powers=weighted)
    return finite_max(out), finite_max(state)


def rounding_sensitivity(problem, ref_out, ref_state, dtype: str, draws: int = 2) -> tuple[float, float]:
    """How far the exact result moves when rounding perturbs its inputs (as for ``sdpa``).

    ``q`` and the initial state move by a relative ``sqrt(D_k) eps(float32)`` (the dot products),
    ``k`` by ``eps(float32)`` (the score roundings) and ``v`` by ``sqrt(N + 1) eps(float32)`` (the
    sums over positions). For a 16-bit dtype the output's sensitivity also covers the scale folded
    into an operand stored in the dtype (clause ``retention.parallel`` allows it): the exact output
    with ``q * scale`` rounded to the dtype and ``scale = 1`` (flash-linear-attention), and with
    ``k * scale`` rounded (torchscale; the initial state is then scaled too, exactly). The state
    holds unscaled products and is not affected. In float32 that rounding is within the float32
    terms. Deterministic: the perturbations come from a fixed seed.
    """
    rng = np.random.default_rng(2019)
    unit = float(np.finfo(np.float32).eps)
    d_k, n = problem.q.shape[-1], problem.q.shape[2]

    def jitter(x, size):
        return x * (1 + unit * size * rng.uniform(-1, 1, x.shape))

    out_sens = state_sens = 0.0
    for _ in range(draws):
        out, state = block(jitter(problem.q, np.sqrt(d_k)), jitter(problem.k, 1.0), jitter(problem.v, np.sqrt(n + 1)),
                           problem.gammas, problem.scale, jitter(problem.state, np.sqrt(d_k)))
        out_sens, state_sens = max(out_sens, max_error(out, ref_out)), max(state_sens, max_error(state, ref_state))
    if dtype in ("float16", "bfloat16"):
        out_sens = max(out_sens, folded_scale_error(problem, ref_out, dtype))
    return out_sens, state_sens


def folded_scale_error(problem, ref_out, dtype: str) -> float:
    """The exact output's error with ``scale`` folded into ``q``, or into ``k``, stored in ``dtype``.

    Either is the output of an exact kernel that folds the scale (with ``k`` folded the initial
    state is scaled too, exactly, since it holds unscaled products); the larger error counts.
    """
    def stored(x):
        return rounded(x * problem.scale, dtype).astype(np.float64)

    p = problem
    folded = ((stored(p.q), p.k, p.state), (p.q, stored(p.k), p.state * p.scale))
    return max(max_error(block(q, k, p.v, p.gammas, 1.0, state)[0], ref_out) for q, k, state in folded)
