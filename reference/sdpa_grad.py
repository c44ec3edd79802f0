"""Clause ``sdpa.grad``: the backward pass of ``sdpa`` in float64, in closed form.

The exact derivative of ``out`` as ``sdpa`` defines it. With ``P`` the attention probabilities
(exactly 0 at hidden keys and in rows without a visible key), ``dout`` the gradient of ``out``,
``D_i = rowsum(dout * out)`` and ``g = kv_head(h)``::

    dP[h, i, j]  = dout[h, i] . v[g, j]
    dS[h, i, j]  = P[h, i, j] * (dP[h, i, j] - D[h, i])      # d/d(final score)
    dbias        = dS, summed over the axes the bias was broadcast along
    dR           = dS * (1 - tanh(R / c)^2)  with softcap c, else dS;  R = scale * q . k
    dq[h, i]     = scale * sum_j dR[h, i, j] k[g, j]
    dk[g, j]     = scale * sum over h of group g, i of dR[h, i, j] q[h, i]
    dv[g, j]     = sum over h of group g, i of P[h, i, j] dout[h, i]

So hidden and padded positions get exactly zero gradient, a fully masked row contributes zero to
every gradient (never NaN), and dk/dv of a KV head sum over its query heads. ALiBi slopes are
constants (no gradient). With an :class:`Arithmetic` that rounds to a dtype, the same steps are
the naive same-precision backward the tolerance policy measures (every intermediate stored in the
dtype, products accumulated in float32). The project's tests check the exact form against
central finite differences and ``torch.autograd`` in float64 (``tests/test_reference_grad.py``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic
from attnspec.reference.sdpa import Problem, prepare, scores, softmax_average, visible

GRADIENTS = ("dq", "dk", "dv", "dbias")


@reference("sdpa_backward")
def sdpa_backward(q, k, v, dout, *, arithmetic: Arithmetic = EXACT, **options) -> tuple[np.ndarray, ...]:
    """Clause ``sdpa.grad``: ``(dq, dk, dv)``, and ``dbias`` in the bias's shape when a bias is given."""
    grads = gradients(q, k, v, dout, arithmetic=arithmetic, **options)
    return tuple(grads[name] for name in GRADIENTS if name in grads)


def gradients(q, k, v, dout, *, arithmetic: Arithmetic = EXACT, **options) -> dict[str, np.ndarray]:
    """``{"dq", "dk", "dv"}`` (and ``"dbias"`` when a bias is given) of ``sum(sdpa(...) * dout)``."""
    problem, dout = setup(q, k, v, dout, arithmetic, **options)
    p, out = forward(problem, arithmetic)
    ds = score_gradient(problem, p, dout, out, arithmetic)
    dr = raw_score_gradient(problem, ds, options.get("softcap"), arithmetic)
    grads = input_gradients(problem, p, dr, dout, arithmetic)
    if options.get("bias") is not None:
        grads["dbias"] = arithmetic.round(unbroadcast(ds, np.shape(options["bias"])))
    return grads


def setup(q, k, v, dout, arithmetic: Arithmetic = EXACT, **options) -> tuple[Problem, np.ndarray]:
    """The validated problem and ``dout``, both zero past the lengths (never read) and in ``arithmetic``."""
    problem = inside_lengths(prepare(q, k, v, **options))
    dout = _checked_dout(dout, problem)
    rows_inside = (np.arange(problem.n_q)[None, :] < problem.q_lens[:, None])[:, None, :, None]
    return problem, np.where(rows_inside, dout, 0.0).astype(arithmetic.compute)


def forward(problem: Problem, arithmetic: Arithmetic = EXACT) -> tuple[np.ndarray, np.ndarray]:
    """``(P, out)``: the probabilities (0 at hidden keys and in rows without one) and the output."""
    rows, cols = range(problem.n_q), range(problem.n_k)
    final = scores(problem, rows, cols, arithmetic)
    vis = np.broadcast_to(visible(problem, rows, cols), final.shape)
    values = np.where(np.isfinite(problem.v), problem.v, 0.0).astype(arithmetic.compute)  # hidden keys: never read
    p = arithmetic.round(probabilities(final, vis))
    out, _ = softmax_average(final, vis, values, arithmetic)
    return p, out


def score_gradient(problem: Problem, p, dout, out, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """``dS = P * (dP - D)`` with ``dP = dout . v`` and ``D = rowsum(dout * out)``."""
    r = arithmetic.round
    values = np.where(np.isfinite(problem.v), problem.v, 0.0).astype(arithmetic.compute)
    d_row = r((dout * out).sum(axis=-1))
    dp = np.where(p > 0, r(per_group(arithmetic.matmul, dout, _t(values), problem)), 0.0)
    return r(p * (dp - d_row[..., None]))


def raw_score_gradient(problem: Problem, ds, softcap, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """``dR``: ``dS`` times the softcap's derivative ``1 - tanh(R / c)^2`` (``dS`` without a softcap)."""
    if softcap is None:
        return ds
    raw = arithmetic.round(per_group(arithmetic.matmul, problem.q, _t(problem.k), problem) * problem.scale)
    return arithmetic.round(ds * (1.0 - np.tanh(raw / float(softcap)) ** 2))


def input_gradients(problem: Problem, p, dr, dout, arithmetic: Arithmetic = EXACT) -> dict[str, np.ndarray]:
    """``dq = scale dR k``, ``dk = scale dR^T q`` and ``dv = P^T dout``, summed over each GQA group."""
    r, mm = arithmetic.round, arithmetic.matmul
    scale = arithmetic.compute(problem.scale)
    q, k = problem.q.astype(arithmetic.compute), problem.k.astype(arithmetic.compute)
    return {
        "dq": r(scale * per_group(mm, dr, k, problem)),
        "dk": r(scale * group_sum(mm, dr, q, problem)),
        "dv": r(group_sum(mm, p, dout, problem)),
    }


def inside_lengths(problem: Problem) -> Problem:
    """``problem`` with q, k and v zeroed past the lengths: what lies there is never read (NaN included)."""
    n_q, n_k = np.arange(problem.n_q), np.arange(problem.n_k)
    q_in = (n_q[None, :] < problem.q_lens[:, None])[:, None, :, None]
    k_in = (n_k[None, :] < problem.kv_lens[:, None])[:, None, :, None]
    q, k, v = np.where(q_in, problem.q, 0.0), np.where(k_in, problem.k, 0.0), np.where(k_in, problem.v, 0.0)
    return replace(problem, q=q, k=k, v=v)


def _checked_dout(dout, problem: Problem) -> np.ndarray:
    dout = check.float_array("dout", dout, ndim=4)
    expected = (problem.batch, problem.h_q, problem.n_q, problem.v.shape[-1])
    if dout.shape != expected:
        raise ValueError(f"dout must have out's shape (B, H_q, N_q, D_v) = {expected}; got {dout.shape}")
    return dout


def _t(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def per_group(matmul, a: np.ndarray, b: np.ndarray, problem: Problem) -> np.ndarray:
    """``a[b, h] @ b[b, kv_head(h)]`` for ``a`` with ``H_q`` heads and ``b`` with ``H_kv``."""
    batch, h_q, n, _ = a.shape
    grouped = a.reshape(batch, problem.h_kv, h_q // problem.h_kv, n, a.shape[-1])
    out = matmul(grouped, b[:, :, None])
    return out.reshape(batch, h_q, n, out.shape[-1])


def group_sum(matmul, a: np.ndarray, b: np.ndarray, problem: Problem) -> np.ndarray:
    """``sum over h in group g of a[b, h]^T @ b[b, h]``: one product per KV head over its group's rows."""
    batch, h_q, n, m = a.shape
    group = h_q // problem.h_kv
    stacked_a = a.reshape(batch, problem.h_kv, group * n, m)
    stacked_b = b.reshape(batch, problem.h_kv, group * n, b.shape[-1])
    return matmul(_t(stacked_a), stacked_b)


def probabilities(final: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Softmax over the visible keys; 0 at hidden keys and in rows without one."""
    s = np.where(vis, final, -np.inf)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    e = np.where(vis, np.exp(s - np.where(np.isneginf(top), 0.0, top)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def unbroadcast(full: np.ndarray, shape: tuple) -> np.ndarray:
    """``full`` summed back to ``shape``, the shape it was broadcast from."""
    lead = full.ndim - len(shape)
    summed = full.sum(axis=tuple(range(lead))) if lead else full
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and summed.shape[i] != 1)
    return summed.sum(axis=axes, keepdims=True).reshape(shape)
