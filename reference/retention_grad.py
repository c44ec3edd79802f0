"""Clause ``retention.grad``: the backward pass of ``retention`` in float64, in closed form.

Every form computes the parallel form's output (clause ``retention.parallel``), so the gradient is
that of ``out = W v + c * (q S0)`` with ``W = scale (q k^T) * D`` and ``c[n] = scale g^(n + 1)``::

    dW  = (dout v^T) * D
    dq  = scale dW k + c * (dout S0^T)        dk = scale dW^T q
    dv  = W^T dout                            dS0 = (c * q)^T dout

The decays ``gammas`` are constants (no gradient). With an :class:`Arithmetic` that rounds to a
dtype, the same steps are the naive same-precision backward the tolerance policy measures. The
project's tests check it against central finite differences and ``torch.autograd`` in float64.
"""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic
from attnspec.reference.retention import Problem, causal_decay, check_form, decay_powers, prepare

GRADIENTS = ("dq", "dk", "dv", "dinitial_state")


@reference("retention_backward")
def retention_backward(
    q,
    k,
    v,
    dout,
    *,
    gammas,
    form: str = "parallel",
    chunk_size: int | None = None,
    scale=None,
    initial_state=None,
    arithmetic: Arithmetic = EXACT,
) -> tuple[np.ndarray, ...]:
    """Clause ``retention.grad``: ``(dq, dk, dv)``, and ``dS0`` exactly when ``initial_state`` is given."""
    check_form(form, chunk_size)  # every valid form has the parallel form's gradient
    problem = prepare(q, k, v, gammas=gammas, scale=scale, initial_state=initial_state)
    grads = gradients(problem, checked_dout(dout, problem), arithmetic)
    return tuple(grads[name] for name in GRADIENTS if name != "dinitial_state" or initial_state is not None)


def gradients(p: Problem, dout: np.ndarray, arithmetic: Arithmetic = EXACT, powers=decay_powers) -> dict:
    """``{"dq", "dk", "dv", "dinitial_state"}`` of ``sum(retention(...) * dout)``; ``powers`` as in
    :func:`attnspec.reference.retention.block` (the tolerance swaps in weighted decays)."""
    c, r, mm = arithmetic.compute, arithmetic.round, arithmetic.matmul
    q, k, v, s0, dout = (np.asarray(x).astype(c) for x in (p.q, p.k, p.v, p.state, dout))
    n = q.shape[2]
    decay = causal_decay(p.gammas, n, c, powers)
    carry = powers(p.gammas, np.arange(n) + 1, c)[..., None] * c(p.scale)  # (H, N, 1): c[n]
    w = r(r(mm(q, _t(k)) * c(p.scale)) * decay)
    dw = r(r(mm(dout, _t(v))) * decay)
    return {
        "dq": r(r(mm(dw, k)) * c(p.scale) + r(mm(dout, _t(s0))) * carry),
        "dk": r(r(mm(_t(dw), q)) * c(p.scale)),
        "dv": r(mm(_t(w), dout)),
        "dinitial_state": r(mm(_t(r(q * carry)), dout)),
    }


def checked_dout(dout, p: Problem) -> np.ndarray:
    """``dout`` as float64 of ``out``'s shape ``(B, H, N, D_v)``, or an error naming it."""
    dout = check.float_array("dout", dout, ndim=4)
    if dout.shape != p.v.shape:
        raise ValueError(f"dout must have out's shape (B, H, N, D_v) = {p.v.shape}; got {dout.shape}")
    return dout


def _t(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)
