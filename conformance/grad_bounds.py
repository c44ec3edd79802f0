"""The tolerance of ``sdpa_backward`` (and of the families' backward passes, below), declared for
the engine of :mod:`.tolerance`.

The policy of :func:`attnspec.tolerance.gradient_tolerance`: the naive run is the reference's
backward with every intermediate (``S``, ``P``, ``out``, ``dP``, ``dS``, ``dR``) stored in the dtype
and products accumulated in float32, as autograd through a naive attention in that dtype computes
it. The floor of each gradient is two ulps of its magnitude (its formula on absolute values: ``dS``
cancels, ``dP - D``, so the result can be 0 where the terms are not) plus ``SENSITIVITY_FACTOR``
times how far the exact gradients move when float32-sized rounding perturbs their inputs.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from attnspec.conformance.tolerance import Bound, Jitter, finite_max, policy_bounds, scaled_score, score_size
from attnspec.reference import linear, linear_grad, retention, retention_grad, sdpa_grad
from attnspec.reference.sdpa import Problem, attend


def gradient_bounds(q, k, v, dout, options: dict, dtype: str, refs: tuple) -> tuple[Bound, ...]:
    """One bound per gradient of ``sdpa_backward(q, k, v, dout, **options)`` (``refs``: its exact results).

    Jitters, each the rounding size of the float32 sums its input enters: the final scores by 1;
    ``S - lse`` per row by ``eps(float32)`` times :func:`_recompute_error_size` absolute (a
    FlashAttention-2 backward recomputes ``P = exp(S - lse)`` from the LSE its forward pass stored
    in float32 and from scores it computes again, in another order);
    ``q`` by ``sqrt(max(D_qk, G N_q))`` (the scores, and ``dk``'s sum over a group's rows); ``k`` by
    ``sqrt(max(D_qk, N_k))`` (the scores, ``dq``'s sum over keys); ``v`` by ``sqrt(max(N_k, D_v))``
    (the output, ``dP``); ``dout`` by ``sqrt(max(D_v, G N_q))`` (``dP``, ``dv``'s sum over rows).
    At 64 bits the size of each gradient is its magnitude (the same formulas on absolute values)
    times the number of roundings a term carries: the forward's score size, plus ``N_k``,
    ``G N_q`` and ``D_v`` for the backward's sums.
    """
    problem, dout64 = sdpa_grad.setup(q, k, v, dout, **options)
    group = problem.h_q // problem.h_kv
    d_qk, d_v = problem.q.shape[-1], problem.v.shape[-1]
    rows = group * problem.n_q

    def exact(score_factor, q, k, v, dout, lse_shift):
        jittered = replace(problem, q=q, k=k, v=v, score_mods=problem.score_mods + (scaled_score(score_factor),))
        return _backward(jittered, dout, options, lse_shift)

    _, lse = attend(problem, range(problem.n_q), range(problem.n_k))

    jitters = (
        (np.ones((problem.batch, problem.h_q, problem.n_q, problem.n_k)), Jitter()),
        (problem.q, Jitter(np.sqrt(max(d_qk, rows)))),
        (problem.k, Jitter(np.sqrt(max(d_qk, problem.n_k)))),
        (problem.v, Jitter(np.sqrt(max(problem.n_k, d_v, 1)))),
        (dout64, Jitter(np.sqrt(max(d_v, rows, 1)))),
        (np.zeros(lse.shape), Jitter(_recompute_error_size(problem, lse), absolute=True)),
    )
    roundings = score_size(problem) + problem.n_k + rows + d_v
    magnitudes = _magnitudes(problem, dout64, options)
    return policy_bounds(
        dtype,
        refs,
        tuple(max(m, 1e-30) for m in magnitudes),
        reference=partial(sdpa_grad.sdpa_backward, q, k, v, dout, **options),
        sizes=lambda: tuple(m * roundings for m in magnitudes),
        exact=exact,
        jitters=jitters,
    )


def _recompute_error_size(problem: Problem, lse: np.ndarray) -> np.ndarray:
    """Per row, how far ``S - lse`` may move in float32 between a forward pass and a backward pass
    that recomputes ``S``: the stored LSE's rounding, ``|lse| + 1``, and the recomputed dot product's,
    ``sqrt(D_qk) * |scale| * max_j sum_d |q_id k_jd|`` (another summation order than the forward's)."""
    dots = sdpa_grad.per_group(np.matmul, np.abs(problem.q), np.swapaxes(np.abs(problem.k), -1, -2), problem)
    spread = np.sqrt(problem.q.shape[-1]) * abs(problem.scale) * dots.max(axis=-1, initial=0.0)
    return np.abs(np.where(np.isfinite(lse), lse, 0.0)) + 1 + spread


def _backward(problem: Problem, dout, options: dict, lse_shift) -> tuple:
    """The exact gradients, with ``P`` recomputed from an LSE moved by ``lse_shift`` (a kernel's stored LSE)."""
    p, out = sdpa_grad.forward(problem)
    p = p * np.exp(-lse_shift)[..., None]
    ds = sdpa_grad.score_gradient(problem, p, dout, out)
    grads = sdpa_grad.input_gradients(
        problem, p, sdpa_grad.raw_score_gradient(problem, ds, options.get("softcap")), dout
    )
    if options.get("bias") is not None:
        grads["dbias"] = sdpa_grad.unbroadcast(ds, np.shape(options["bias"]))
    return tuple(grads[name] for name in sdpa_grad.GRADIENTS if name in grads)


def _magnitudes(problem: Problem, dout, options: dict) -> tuple[float, ...]:
    """The largest element of each gradient's formula evaluated on absolute values."""
    p, out = sdpa_grad.forward(problem)
    mm, absolute = np.matmul, replace(problem, q=np.abs(problem.q), k=np.abs(problem.k), v=np.abs(problem.v))
    dp = sdpa_grad.per_group(mm, np.abs(dout), np.swapaxes(absolute.v, -1, -2), problem)
    ds = p * (dp + np.abs(dout * out).sum(axis=-1, keepdims=True))
    grads = sdpa_grad.input_gradients(absolute, p, ds, np.abs(dout))
    if options.get("bias") is not None:
        grads["dbias"] = sdpa_grad.unbroadcast(ds, np.shape(options["bias"]))
    return tuple(finite_max(grads[name]) for name in sdpa_grad.GRADIENTS if name in grads)


# The other families' backward passes, by the same rule: the naive run is the family's backward
# reference in the dtype (every intermediate stored, float32 accumulation), the floor two ulps of
# each gradient's formula on absolute values plus the sensitivity of the exact gradients to float32
# rounding of each input by sqrt(n), n the longest float32 sum that input enters.


def linear_gradient_bounds(q, k, v, dout, options: dict, state: dict, dtype: str, refs: tuple) -> tuple[Bound, ...]:
    """One bound per gradient of ``linear_attention_backward`` (``refs``: its exact results).

    Jitters: ``q`` by ``sqrt(max(F, N_q))`` (``f_q f_k^T``; ``dk``'s sum over rows), ``k`` by
    ``sqrt(max(F, N_k))`` (``dq``'s sum over keys), ``v`` by ``sqrt(max(N_k, D_v))`` (``num``;
    ``dnum v^T``), ``dout`` by ``sqrt(max(D_v, N_q))`` (``dden``; ``dv``'s sum over rows), the carried
    state and normalizer by ``sqrt(max(F, D_v))``. At 64 bits each gradient's magnitude times its
    roundings ``F + N_k + N_q + D_v + 4`` (forward sums, backward sums, the division).
    """
    q64, k64, v64, s0, z0 = linear.validate(q, k, v, **options, **state)
    d64 = linear_grad.checked_dout(dout, q64, v64)
    f, n_q, n_k, d_v = q64.shape[-1], q64.shape[2], k64.shape[2], v64.shape[-1]

    def exact(q, k, v, dout, s0, z0):
        given = {name: x for name, x in (("initial_state", s0), ("initial_normalizer", z0)) if name in state}
        return linear_grad.linear_attention_backward(q, k, v, dout, **options, **given)

    jitters = (
        (q64, Jitter(np.sqrt(max(f, n_q)))),
        (k64, Jitter(np.sqrt(max(f, n_k)))),
        (v64, Jitter(np.sqrt(max(n_k, d_v)))),
        (d64, Jitter(np.sqrt(max(d_v, n_q)))),
        (s0, Jitter(np.sqrt(max(f, d_v)))),
        (z0, Jitter(np.sqrt(f))),
    )
    magnitudes = _linear_magnitudes(q64, k64, v64, d64, s0, z0, options, state)
    roundings = f + n_k + n_q + d_v + 4
    return policy_bounds(
        dtype,
        refs,
        tuple(max(m, 1e-30) for m in magnitudes),
        reference=partial(linear_grad.linear_attention_backward, q, k, v, dout, **options, **state),
        sizes=lambda: tuple(m * roundings for m in magnitudes),
        exact=exact,
        jitters=jitters,
    )


def _linear_magnitudes(q, k, v, dout, s0, z0, options: dict, state: dict) -> tuple[float, ...]:
    """The largest element of each gradient's formula on absolute values (``dden`` added, not subtracted)."""
    name, scale = options.get("feature_map", "elu+1"), options.get("scale", 1.0)
    fq, fk = np.abs(linear.phi(q, name)) * scale, np.abs(linear.phi(k, name))
    absolute = (np.abs(v), np.abs(s0), np.abs(z0))
    dnum, dden = linear_grad.output_gradients(fq, fk, *absolute, np.abs(dout), **options)
    grads = linear_grad.feature_gradients(fq, fk, *absolute, dnum, -dden, **options)
    grads["dq"] = grads["dq"] * scale * np.abs(linear_grad.phi_prime(q, name))
    grads["dk"] = grads["dk"] * np.abs(linear_grad.phi_prime(k, name))
    kept = {"dinitial_state": "initial_state", "dinitial_normalizer": "initial_normalizer"}
    return tuple(finite_max(g) for n, g in grads.items() if n not in kept or kept[n] in state)


def retention_gradient_bounds(q, k, v, dout, kwargs: dict, dtype: str, refs: tuple) -> tuple[Bound, ...]:
    """One bound per gradient of ``retention_backward`` (``refs``: its exact results).

    Jitters: ``q``, ``k`` by ``sqrt(max(D_k, N))`` (the dot products; the sums over positions of
    ``dq`` and ``dk``), ``v`` and ``dout`` by ``sqrt(max(N, D_v))``, the initial state by
    ``sqrt(max(D_k, D_v))``. At 64 bits each gradient's formula on absolute values with every decay
    ``g^e`` weighted by its roundings ``D_k + D_v + N + 4 + e (1 + |log g|)``, as the forward's
    :func:`attnspec.conformance.bounds.propagation_sizes` weighs them.
    """
    problem = retention.prepare(q, k, v, **{n: kwargs.get(n) for n in ("gammas", "scale", "initial_state")})
    d64 = retention_grad.checked_dout(dout, problem)
    d_k, n, d_v = problem.q.shape[-1], problem.q.shape[2], problem.v.shape[-1]
    names = tuple(retention_grad.GRADIENTS[: len(refs)])

    def exact(q, k, v, dout, state, powers=retention.decay_powers):
        grads = retention_grad.gradients(replace(problem, q=q, k=k, v=v, state=state), dout, powers=powers)
        return tuple(grads[name] for name in names)

    def weighted(gammas, e, dtype):
        e = np.asarray(e, dtype=dtype)
        log_g = np.abs(np.log(np.where(gammas > 0, gammas, 1.0))).reshape((-1,) + (1,) * e.ndim)
        return retention.decay_powers(gammas, e, dtype) * (d_k + d_v + n + 4 + e * (1 + log_g))

    q_abs, k_abs, v_abs, d_abs, s_abs = (np.abs(x) for x in (problem.q, problem.k, problem.v, d64, problem.state))
    jitters = (
        (problem.q, Jitter(np.sqrt(max(d_k, n)))),
        (problem.k, Jitter(np.sqrt(max(d_k, n)))),
        (problem.v, Jitter(np.sqrt(max(n, d_v)))),
        (d64, Jitter(np.sqrt(max(n, d_v)))),
        (problem.state, Jitter(np.sqrt(max(d_k, d_v)))),
    )
    return policy_bounds(
        dtype,
        refs,
        tuple(finite_max(m, 1e-30) for m in exact(q_abs, k_abs, v_abs, d_abs, s_abs)),
        reference=partial(retention_grad.retention_backward, q, k, v, dout, **kwargs),
        sizes=lambda: tuple(finite_max(m) for m in exact(q_abs, k_abs, v_abs, d_abs, s_abs, powers=weighted)),
        exact=exact,
        jitters=jitters,
    )
