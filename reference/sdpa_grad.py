"""The backward pass of ``sdpa`` in float64, in closed form (issue 16's groundwork).

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
constants here (no gradient). Not yet a clause: the ``sdpa.grad`` clauses, their conformance tests
and mutants build on this (issue 16). The project's tests check it against central finite
differences and against ``torch.autograd`` in float64 (``tests/test_reference_grad.py``).
"""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.reference.sdpa import prepare, scores, visible


def sdpa_backward(q, k, v, dout, **options) -> dict[str, np.ndarray]:
    """``{"dq", "dk", "dv"}`` (and ``"dbias"``, in the bias's own shape, when a bias is given) of
    ``sum(sdpa(q, k, v, **options) * dout)``; every array float64."""
    problem = prepare(q, k, v, **options)
    b, h_q, n_q, d_qk = problem.q.shape
    h_kv, n_k, d_v = problem.h_kv, problem.n_k, problem.v.shape[-1]
    group = h_q // h_kv
    dout = check.float_array("dout", dout, ndim=4)
    if dout.shape != (b, h_q, n_q, d_v):
        raise ValueError(f"dout must have out's shape (B, H_q, N_q, D_v) = {(b, h_q, n_q, d_v)}; got {dout.shape}")
    rows, cols = range(n_q), range(n_k)
    final = scores(problem, rows, cols)
    vis = np.broadcast_to(visible(problem, rows, cols), final.shape)
    p = _probabilities(final, vis)

    def grouped(x):  # (B, H_q, ...) -> (B, H_kv, G, ...)
        return x.reshape(b, h_kv, group, *x.shape[2:])

    values = np.where(np.isfinite(problem.v), problem.v, 0.0)  # hidden keys' values are never read
    out = np.einsum("bkgij,bkjd->bkgid", grouped(p), values)
    d_row = np.einsum("bkgid,bkgid->bkgi", grouped(dout), out)
    dp = np.where(grouped(vis), np.einsum("bkgid,bkjd->bkgij", grouped(dout), values), 0.0)
    ds = grouped(p) * (dp - d_row[..., None])
    dr = ds
    if options.get("softcap") is not None:
        raw = problem.scale * np.einsum("bkgid,bkjd->bkgij", grouped(problem.q), problem.k)
        dr = ds * (1.0 - np.tanh(raw / float(options["softcap"])) ** 2)
    grads = {
        "dq": problem.scale * np.einsum("bkgij,bkjd->bkgid", dr, problem.k).reshape(b, h_q, n_q, d_qk),
        "dk": problem.scale * np.einsum("bkgij,bkgid->bkjd", dr, grouped(problem.q)),
        "dv": np.einsum("bkgij,bkgid->bkjd", grouped(p), grouped(dout)),
    }
    if options.get("bias") is not None:
        grads["dbias"] = _unbroadcast(ds.reshape(b, h_q, n_q, n_k), np.shape(options["bias"]))
    return grads


def _probabilities(final: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Softmax over the visible keys; 0 at hidden keys and in rows without one."""
    s = np.where(vis, final, -np.inf)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    e = np.where(vis, np.exp(s - np.where(np.isneginf(top), 0.0, top)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def _unbroadcast(full: np.ndarray, shape: tuple) -> np.ndarray:
    """``full`` summed back to ``shape``, the shape it was broadcast from."""
    lead = full.ndim - len(shape)
    summed = full.sum(axis=tuple(range(lead))) if lead else full
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and summed.shape[i] != 1)
    return summed.sum(axis=axes, keepdims=True).reshape(shape)
