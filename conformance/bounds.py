"""The tolerance of each operation beyond ``sdpa``, declared for the engine of :mod:`.tolerance`.

Each bound is one :func:`~attnspec.conformance.tolerance.policy_bounds` call that states what
differs between operations and nothing else: the reference call (evaluated in the dtype for the
naive error), the scale of the floor per output, which inputs of the exact formula get which
float32 :class:`~attnspec.conformance.tolerance.Jitter`, what a kernel may store in the dtype (an
extra sensitivity),
and the float64 error-propagation size (an analysis per operation, stated in its docstring).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from attnspec import reference
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.tolerance import Bound, Jitter, finite_max, max_error, policy_bounds, sdpa_bounds
from attnspec.reference import linear, lowrank, performer
from attnspec.reference.retention import block, decay_powers, prepare, retention
from attnspec.reference.routed import problem as routed_problem
from attnspec.reference.sdpa import prepare as sdpa_prepare

# Linear attention


def linear_bounds(q, k, v, state: dict, options: dict, dtype: str, ref) -> tuple[Bound, Bound, Bound]:
    """Bounds for ``(out, final state, final normalizer)``; ``ref`` is the reference's triple.

    The naive run is the PARALLEL form in the dtype. Floors: the output's scale is measured row by
    row as ``(sum_j |a_ij| |v_j| + |out_i| sum_j |a_ij|) / (den_i + eps)`` with normalisation (the
    denominator is a sum of non-negative terms and cannot cancel; about ``max|v|``, larger where a
    carried state or ``eps`` weighs in), and as ``sum_j |a_ij| |v_j|`` without (the identity
    map's numerator can cancel: its own propagation size, not ``|out|``). Jitters: query features
    by ``sqrt(F)``, key features by 1, values and the carried state by ``sqrt(N_k)``.
    """
    causal, n_k, d = options["causal"], k.shape[2], q.shape[3]
    phi_q, fk, v64 = linear.phi(q, options["feature_map"]), linear.phi(k, options["feature_map"]), np.asarray(v, float)
    s0, z0 = _carried(state, fk.shape[:2] + fk.shape[-1:], v.shape[-1])
    mag = linear.parallel(
        np.abs(phi_q) * options["scale"], np.abs(fk), np.abs(v64), np.abs(s0), np.abs(z0), causal=causal
    )
    den = linear.parts(q, k, v, **options, **state).den
    scales = (
        _linear_out_scale(mag, den, ref[0], options),
        finite_max(mag.state, 1e-30),
        finite_max(mag.normalizer, 1e-30),
    )

    def parallel(fq, fk, v, s0, z0):
        p = linear.parallel(fq, fk, v, s0, z0, causal=causal)
        return linear.finish(p.num, p.den, normalize=options["normalize"], eps=options["eps"]), p.state, p.normalizer

    fq, grow = phi_q * options["scale"], Jitter(math.sqrt(n_k))
    jitters = ((fq, Jitter(math.sqrt(fq.shape[-1]))), (fk, Jitter()), (v64, grow), (s0, grow), (z0, grow))
    sizes = (scales[0] * 2 * (n_k + d + 3), scales[1] * (n_k + 2), scales[2] * (n_k + 2))
    naive = partial(linear.linear_attention, q, k, v, **options, **state, output_final_state=True)
    return policy_bounds(dtype, ref, scales, reference=naive, sizes=lambda: sizes, exact=parallel, jitters=jitters)


def _carried(state: dict, features: tuple, d_v: int) -> tuple[np.ndarray, np.ndarray]:
    """The carried state and normalizer as float64, zero where the call has none."""
    s0, z0 = state.get("initial_state"), state.get("initial_normalizer")
    return (
        np.asarray(np.zeros(features + (d_v,)) if s0 is None else s0, np.float64),
        np.asarray(np.zeros(features) if z0 is None else z0, np.float64),
    )


def _linear_out_scale(mag, den, ref_out, options) -> float:
    if not options["normalize"]:
        return finite_max(mag.num, 1e-30)
    den = den + options["eps"]
    rows = den > 0
    spread = mag.num.max(axis=-1) + np.abs(ref_out).max(axis=-1) * mag.den
    return finite_max(spread[rows] / den[rows], 1e-30)


def efficient_bound(q, k, v, dtype: str, ref) -> Bound:
    """``efficient_attention``: floor ``max|v|``. Jitters: ``exp(x - max)`` rounds its argument
    relative to ``|x| + |max|`` (absolute, per softmax axis: features of q, positions of k); ``v``
    by ``sqrt(N_k)``. At 64 bits the exponent arguments carry their own magnitude's rounding."""
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    vmax, size = finite_max(v, 1e-30), k.shape[2] + q.shape[3] + 2 * (finite_max(q) + finite_max(k)) + 10
    jitters = (
        (q64, Jitter(np.abs(q64) + np.abs(q64).max(-1, keepdims=True), absolute=True)),
        (k64, Jitter(np.abs(k64) + np.abs(k64).max(-2, keepdims=True), absolute=True)),
        (v64, Jitter(math.sqrt(k.shape[2]))),
    )
    return policy_bounds(
        dtype,
        (ref,),
        (vmax,),
        reference=partial(linear.efficient_attention, q, k, v),
        sizes=lambda: (vmax * size,),
        exact=linear.efficient_attention,
        jitters=jitters,
    )[0]


# Performer: the FAVOR+ estimator's logits (features and the Gram check are in .hand_bounds)


def logit_size(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_d |x_d| |w_fd| + |x|^2 / 2``: the magnitude a logit's rounding error is relative to."""
    x = np.abs(np.asarray(x, np.float64))
    return x @ np.abs(np.asarray(w, np.float64)).T + (x * x).sum(axis=-1, keepdims=True) / 2


def performer_bound(q, k, v, w, causal: bool, dtype: str, ref, scale: float | None = None) -> Bound:
    """``performer``: floor ``max|v|``. The jitters act on the LOGITS (an exception to jittering
    inputs): each moves by ``eps32 (sqrt(D) size + 1)`` absolute, ``size`` its :func:`logit_size`,
    because ``exp`` turns that into a relative error of its feature; ``v`` by ``sqrt(N_k)``."""
    d = q.shape[-1]
    root = math.sqrt(1 / math.sqrt(d) if scale is None else scale)
    q64, k64, w64 = np.asarray(q, np.float64) * root, np.asarray(k, np.float64) * root, np.asarray(w, np.float64)
    size_q, size_k = logit_size(q64, w), logit_size(k64, w)
    vmax = finite_max(v, 1e-30)
    lq, lk = performer.logits(q64, w64, performer.EXACT), performer.logits(k64, w64, performer.EXACT)
    jitters = (
        (lq, Jitter(math.sqrt(d) * size_q + 1, absolute=True)),
        (lk, Jitter(math.sqrt(d) * size_k + 1, absolute=True)),
        (v, Jitter(math.sqrt(k.shape[2]))),
    )
    size = vmax * 2 * (d * (size_q.max() + size_k.max()) + w.shape[0] + k.shape[2] + 4)
    return policy_bounds(
        dtype,
        (ref,),
        (vmax,),
        sizes=lambda: (size,),
        reference=partial(performer.performer, q, k, v, projection=w, causal=causal, scale=scale),
        exact=partial(performer.attend_logits, causal=causal),
        jitters=jitters,
    )[0]


def orthogonal_bound(g, norms, dtype: str, ref) -> Bound:
    """``orthogonal_projection``: floor ``max|ref|``; the naive run is the QR in float32 (LAPACK
    ``sgeqrf``). Jitters: ``G`` by ``sqrt(D)``, the norms by 1. At 64 bits the Q factor moves by
    ``cond(G_b)`` times the rounding, times ``max norm``."""
    g64, n64 = np.asarray(g, np.float64), np.asarray(norms, np.float64)
    d = g.shape[-1]
    return policy_bounds(
        dtype,
        (ref,),
        (finite_max(ref, 1e-30),),
        sizes=lambda: (finite_max(n64, 1e-30) * d * float(np.linalg.cond(g64).max()),),
        reference=partial(performer.orthogonal_projection, g, norms),
        exact=performer.orthogonal_projection,
        jitters=((g64, Jitter(math.sqrt(d))), (n64, Jitter())),
    )[0]


# Retention


def retention_bounds(q, k, v, kwargs: dict, dtype: str, ref_out, ref_state) -> tuple[Bound, Bound]:
    """``(output bound, state bound)`` for ``retention(q, k, v, **kwargs)``; floors ``max|ref|``.

    The naive error is that of the form named in ``kwargs`` (a recurrent kernel is held to a naive
    recurrence, a chunkwise one to naive chunks). Jitters: ``q`` and the initial state by
    ``sqrt(D_k)`` (the dot products), ``k`` by 1 (the score roundings), ``v`` by ``sqrt(N + 1)``
    (the sums over positions). Stored: the clause lets a kernel fold ``scale`` into ``q``
    (flash-linear-attention) or ``k`` (torchscale), which in a 16-bit dtype adds one rounding of
    the scaled operand that the naive run (which applies ``scale`` to the scores) does not make;
    :func:`folded_scale_error` is that error for an exact kernel, so a folding kernel is held to
    its own arithmetic beside it, never more. The state holds unscaled products and is not
    affected; in float32 that rounding is within the float32 terms.
    """
    problem = prepare(q, k, v, **{n: kwargs.get(n) for n in ("gammas", "scale", "initial_state")})
    d_k, n = problem.q.shape[-1], problem.q.shape[2]
    jitters = (
        (problem.q, Jitter(np.sqrt(d_k))),
        (problem.k, Jitter()),
        (problem.v, Jitter(np.sqrt(n + 1))),
        (problem.state, Jitter(np.sqrt(d_k))),
    )
    folded = dtype in ("float16", "bfloat16")
    return policy_bounds(
        dtype,
        (ref_out, ref_state),
        (finite_max(ref_out, 1e-30), finite_max(ref_state, 1e-30)),
        reference=partial(retention, q, k, v, **kwargs, return_state=True),
        sizes=lambda: propagation_sizes(problem),
        jitters=jitters,
        exact=lambda q, k, v, state: block(q, k, v, problem.gammas, problem.scale, state),
        extra_sensitivity=lambda: (folded_scale_error(problem, ref_out, dtype),) if folded else (),
    )


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

    out, state = block(
        np.abs(problem.q),
        np.abs(problem.k),
        np.abs(problem.v),
        problem.gammas,
        abs(problem.scale),
        np.abs(problem.state),
        powers=weighted,
    )
    return finite_max(out), finite_max(state)


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


# Linformer and routed attention


def linformer_bound(q, k, v, kwargs: dict, dtype: str, ref_out) -> Bound:
    """``linformer``: dense attention on projected keys and values; floor ``max|F V|``.

    Jitters: ``q`` by ``sqrt(D_qk)``, ``k`` by ``sqrt(N)``, ``v`` by ``sqrt(N + k_proj)`` (the
    projections' sums, then the attention's). Stored: a kernel MAY store the projected keys and
    values in the dtype (they are the keys and values of the attention that follows, as ``mha``
    stores its projections); the naive run rounds them too, but its rounding is one draw: with
    large scores the softmax is nearly one-hot and half an ulp of a projected key can change which
    key wins. The exact attention on ``E K`` and ``F V`` rounded to the dtype measures how far that
    storage alone moves the result, so the bound admits it whatever the luck.

    At 64 bits, with ``K' = |E||K|`` and ``A`` the largest ``|scale| |q_i| . K'_j``: the attention's
    ``max|F V| (D_qk A + k_proj + 1)``, the score error ``N A`` from projecting the keys (which
    moves a softmax average by at most twice ``max|F V|`` per unit of score), and ``N max(|F||V|)``
    from projecting the values, in ulps.
    """
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    e, f = (np.asarray(kwargs[n], np.float64) for n in ("e", "f"))
    vmax = finite_max(lowrank.project(f, v64), 1e-30)
    n, k_proj, d = k.shape[2], e.shape[-2], q.shape[-1]

    def size():
        scale = sdpa_prepare(q64, k64, v64, scale=kwargs.get("scale")).scale
        k_abs = np.repeat(lowrank.project(np.abs(e), np.abs(k64)), q.shape[1] // k.shape[1], axis=1)
        a = abs(scale) * finite_max(np.abs(q64) @ np.swapaxes(k_abs, -1, -2))
        return (vmax * (d * a + k_proj + 1 + 2 * n * a) + n * finite_max(lowrank.project(np.abs(f), np.abs(v64))),)

    def stored():
        k_stored, v_stored = (rounded(lowrank.project(p, x), dtype).astype(np.float64) for p, x in ((e, k64), (f, v64)))
        return (max_error(reference.sdpa(q64, k_stored, v_stored, scale=kwargs.get("scale")), ref_out),)

    jitters = ((q64, Jitter(np.sqrt(d))), (k64, Jitter(np.sqrt(n))), (v64, Jitter(np.sqrt(n + k_proj))))
    return policy_bounds(
        dtype,
        (ref_out,),
        (vmax,),
        reference=partial(lowrank.linformer, q, k, v, **kwargs),
        sizes=size,
        exact=partial(lowrank.linformer, **kwargs),
        jitters=jitters,
        extra_sensitivity=stored,
    )[0]


def routed_bounds(q, k, v, kwargs: dict, dtype: str, ref_out, ref_lse) -> tuple[Bound, Bound]:
    """``sdpa``'s bounds on the equivalent problem: the same-cluster mask (with ``causal``)."""
    q, k, v, options = routed_problem(q, k, v, **kwargs)
    return sdpa_bounds(q, k, v, {n: o for n, o in options.items() if o is not None}, dtype, ref_out, ref_lse)
