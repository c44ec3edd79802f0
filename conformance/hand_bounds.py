"""The tolerance analyses that are not the policy's formula on one reference call, each explicit.

:mod:`.tolerance` and :mod:`.bounds` hold every bound that is "the reference in the dtype, plus
a floor with float32 jitters". These differ, and say why:

- **NSA** (:func:`nsa_bound`): three attention branches gated and summed; each branch is ``sdpa``'s
  bound, the compressed one on summaries compressed in the dtype, and the gated sum adds its own
  rounding. The **selection margin** (:func:`selection_margin`) is a margin on a ranking, not a
  bound on an output: inputs whose top-n blocks are closer than it are drawn again.
- **Routing and LSH** (:func:`routing_margin`, :func:`bucket_margin`): margins on the cosine and
  projection argmaxes, as for NSA; exact ties are left in (the tie rule decides them in every
  precision). :func:`lsh_bound` is ``sdpa``'s bound with the unit keys a naive kernel stores.
- **The Performer estimator**: :func:`features_bound` turns a logit's rounding into a relative
  error of its feature analytically (first order, no random draw); :func:`gram_bound` bounds the
  orthogonality of a built block by Householder QR's backward error, not by a reference call.
"""

from __future__ import annotations

import math

import numpy as np

from attnspec import tolerance as policy
from attnspec.conformance.bounds import logit_size
from attnspec.conformance.dtypes import eps
from attnspec.conformance.tolerance import (
    UNIT32,
    Bound,
    finite_max,
    float64_bound,
    max_error,
    naive_arithmetic,
    policy_bounds,
    relative_bound,
    sdpa_bounds,
)
from attnspec.reference import performer
from attnspec.reference.arithmetic import EXACT, Arithmetic
from attnspec.reference.lsh import LSH
from attnspec.reference.nsa import NSA
from attnspec.reference.sdpa import sdpa as dense


def ranking_margin(naive: np.ndarray, exact: np.ndarray, dtype: str, size: float) -> float:
    """Twice the tolerance of a ranked quantity (both sides of a comparison may err): relative to
    its naive error at 16/32 bits, ulps x ``size`` at 64."""
    if dtype == "float64":
        return 2 * float64_bound(size).value
    return 2 * relative_bound(max_error(naive, exact), finite_max(exact, 1e-30), dtype).value


# NSA


def selection_margin(problem: NSA, imp: np.ndarray, dtype: str) -> float:
    """The margin of the top-n block ranking on the importances ``imp``."""
    naive = problem.importance(naive_arithmetic(dtype)) if dtype != "float64" else imp
    return ranking_margin(naive, imp, dtype, problem.group * (_cmp_size(problem) + 1))


def _abs_compress(problem: NSA, x: np.ndarray, weights) -> np.ndarray:
    return problem.compress(np.abs(x), None if weights is None else np.abs(weights))


def _reduction(problem: NSA, weights, dim: int) -> int:
    """Terms summed per compressed element: ``l``, or ``l * D`` for the linear map."""
    return problem.cmp_len * (dim if weights is not None and weights.ndim == 2 else 1)


def _cmp_size(problem: NSA) -> float:
    """Error propagation of the compressed scores: ``(D + L) * A + N_c + 1`` with ``A`` from absolute values."""
    k_abs = _abs_compress(problem, problem.k, problem.compress_k)
    b, h_q, n_q, d = problem.q.shape
    grouped = np.abs(problem.q).reshape(b, problem.k.shape[1], problem.group, n_q, d)
    a = problem.scale * finite_max(grouped @ np.swapaxes(k_abs, -1, -2)[:, :, None])
    return (d + _reduction(problem, problem.compress_k, d)) * a + k_abs.shape[2] + 1


def nsa_bound(problem: NSA, dtype: str) -> Bound:
    """Sum over the branches of ``max|gate|`` times the branch's ``sdpa`` bound, plus the gated sum's rounding.

    The compressed branch is bounded on the summaries a naive kernel would store (compressed in the
    dtype's naive arithmetic), so its bound includes the compression's rounding; at 64 bits the
    compression's propagation is added explicitly.
    """
    total, scale, parts = 0.0, 0.0, []
    for c, (q, k, v, options) in enumerate(problem.branches()):
        ref_out, ref_lse = dense(q, k, v, return_lse=True, **options)
        if c == 0 and dtype != "float64":
            arith = naive_arithmetic(dtype)
            k = problem.compress(problem.k, problem.compress_k, arith)
            v = problem.compress(problem.v, problem.compress_v, arith)
        value = sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse)[0].value
        if c == 0 and dtype == "float64":
            v_abs = _abs_compress(problem, problem.v, problem.compress_v)
            value += float64_bound(
                finite_max(v, 1e-30) * 2 * _cmp_size(problem)
                + _reduction(problem, problem.compress_v, v.shape[-1]) * finite_max(v_abs)
            ).value
        gate = finite_max(problem.gates[..., c])
        total, scale = total + gate * value, scale + gate * finite_max(ref_out)
        parts.append(f"{gate:.3g} x {value:.3g}")
    ulps = policy.FLOAT64_EPS * float(np.finfo(np.float64).eps) if dtype == "float64" else policy.FLOOR_EPS * eps(dtype)
    floor = ulps * scale
    return Bound(total + floor, f"gated branch bounds {' + '.join(parts)} + rounding of the sum {floor:.3g}")


# Routing and LSH


def unit(x: np.ndarray, arith: Arithmetic) -> np.ndarray:
    """``x / |x|`` as a naive kernel computes it: the squared norm, its root and the quotient rounded."""
    x = x.astype(arith.compute)
    norm = arith.round(np.sqrt(arith.round(arith.matmul(x[..., None, :], x[..., :, None])[..., 0])))
    return arith.round(x / np.where(norm > 0, norm, 1))


def routing_margin(x: np.ndarray, centroids: np.ndarray, exact: np.ndarray, dtype: str) -> float:
    """The margin of the nearest-centroid decision on the ``exact`` cosines of ``x`` (float64)."""
    if dtype == "float64":
        return ranking_margin(exact, exact, dtype, x.shape[-1] + 4)
    arith = naive_arithmetic(dtype)
    naive = arith.round(arith.matmul(unit(x, arith), np.swapaxes(unit(centroids, arith), -1, -2)[None]))
    return ranking_margin(naive, exact, dtype, x.shape[-1] + 4)


def projections(x: np.ndarray, rotations: np.ndarray, arith: Arithmetic = EXACT) -> np.ndarray:
    """``[y, -y]`` of the unit vectors, ``(B, H, R, N, n_buckets)``: what the buckets are the argmax of."""
    y = arith.round(arith.matmul(unit(x, arith)[:, :, None], rotations.astype(arith.compute)[None, None]))
    return np.concatenate([y, -y], axis=-1)


def bucket_margin(qk: np.ndarray, rotations: np.ndarray, exact: np.ndarray, dtype: str) -> float:
    """The margin of the bucket argmax on the ``exact`` :func:`projections` of ``qk``."""
    size = (qk.shape[-1] + 4) * finite_max(np.linalg.norm(rotations.astype(np.float64), axis=1))
    naive = projections(qk, rotations, naive_arithmetic(dtype)) if dtype != "float64" else exact
    return ranking_margin(naive, exact, dtype, size)


def lsh_bound(problem: LSH, dtype: str) -> Bound:
    """``sdpa``'s bound on the equivalent problem (the union of the rounds' visible sets), with the
    unit keys a naive kernel stores."""
    q, k, v, options = problem.equivalent()
    ref_out, ref_lse = dense(q, k, v, return_lse=True, **options)
    if dtype != "float64":
        k = unit(problem.qk, naive_arithmetic(dtype))
    return sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse)[0]


# The Performer estimator


def features_bound(x, w, dtype: str, ref) -> Bound:
    """``performer_features``: a logit error becomes a relative error of its feature. The
    sensitivity is that first-order effect of a float32-sized logit error, ``|ref| eps32 (sqrt(D)
    size + 1)`` with ``size`` the logit's :func:`~.bounds.logit_size`, not a random draw."""
    size = logit_size(x, w)
    d = x.shape[-1]
    sens = finite_max(ref * UNIT32 * (math.sqrt(d) * size + 1))
    return policy_bounds(
        dtype,
        (ref,),
        (finite_max(ref, 1e-30),),
        extra_sensitivity=lambda: (sens,),
        reference=lambda arithmetic: performer.performer_features(x, w, arithmetic=arithmetic),
        sizes=lambda: (finite_max(ref * (d * size + 2), 1e-30),),
    )[0]


def gram_bound(norms, d: int, dtype: str) -> Bound:
    """How far ``W_b W_b^T`` of a correctly built, rounded block may be from ``diag(norms^2)``:
    Householder QR is orthogonal to ``O(D)`` roundings of its working precision, then the rows are
    rounded to the dtype (float32 work for 16-bit dtypes)."""
    work = "float64" if dtype == "float64" else "float32"
    value = (4 * eps(dtype) + 4 * (d + 2) * eps(work)) * finite_max(norms, 1e-30) ** 2
    return Bound(value, f"4 eps({dtype}) + 4 (D + 2) eps({work}), times max norm^2")
