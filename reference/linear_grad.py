"""Clause ``linear.grad``: the backward pass of ``linear_attention`` in float64, in closed form.

Every form computes the parallel form's output (clause ``linear.parallel``), so the gradient is
that of ``out = num / (den + eps)`` with ``num = A v + f_q S0``, ``den = rowsum(A) + f_q z0`` and
``A = (f_q f_k^T) * M``. Like softmax's ``D_i``, the denominator's gradient is one number per row,
``dden_i = -rowsum(dout * out)_i / (den_i + eps)``::

    dnum = dout / (den + eps)            dA = (dnum v^T + dden) * M
    df_q = dA f_k + dnum S0^T + dden z0^T          df_k = dA^T f_q
    dq = scale df_q phi'(q)    dk = df_k phi'(k)    dv = A^T dnum    dS0 = f_q^T dnum    dz0 = f_q^T dden

Rows with ``den + eps = 0`` (output exactly 0) get ``dnum = dden = 0``. With an :class:`Arithmetic`
that rounds to a dtype, the same steps are the naive same-precision backward (the tolerance
policy's). The project's tests check it against finite differences and ``torch.autograd``.
"""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference import linear
from attnspec.reference.arithmetic import EXACT, Arithmetic

GRADIENTS = ("dq", "dk", "dv", "dinitial_state", "dinitial_normalizer")


@reference("linear_attention_backward")
def linear_attention_backward(q, k, v, dout, *, arithmetic: Arithmetic = EXACT, **options) -> tuple[np.ndarray, ...]:
    """Clause ``linear.grad``: ``(dq, dk, dv)``, then ``dS0`` and ``dz0`` for the initial sums given."""
    grads = gradients(q, k, v, dout, arithmetic=arithmetic, **options)
    return tuple(grads[name] for name in GRADIENTS if name in grads)


def gradients(q, k, v, dout, *, arithmetic: Arithmetic = EXACT, **options) -> dict[str, np.ndarray]:
    """The gradients of ``sum(linear_attention(q, k, v, **options) * dout)``, by name."""
    q, k, v, s0, z0 = linear.validate(q, k, v, **options)
    dout = checked_dout(dout, q, v)
    feature_map, scale = options.get("feature_map", "elu+1"), options.get("scale", 1.0)
    c, r = arithmetic.compute, arithmetic.round
    fq = r(linear.phi(q, feature_map, arithmetic) * c(scale))
    fk = linear.phi(k, feature_map, arithmetic)
    dnum, dden = output_gradients(fq, fk, v, s0, z0, dout.astype(c), arithmetic, **options)
    grads = feature_gradients(fq, fk, v.astype(c), s0.astype(c), z0.astype(c), dnum, dden, arithmetic, **options)
    grads["dq"] = r(grads["dq"] * c(scale) * phi_prime(q, feature_map))
    grads["dk"] = r(grads["dk"] * phi_prime(k, feature_map))
    if options.get("initial_state") is None:
        del grads["dinitial_state"]
    if options.get("initial_normalizer") is None:
        del grads["dinitial_normalizer"]
    return grads


def output_gradients(fq, fk, v, s0, z0, dout, arithmetic: Arithmetic = EXACT, **options):
    """``(dnum, dden)``: the output's gradient through ``linear.normalizer`` (0 in rows with ``den + eps = 0``)."""
    if not options.get("normalize", True):
        return dout, np.zeros(dout.shape[:-1], arithmetic.compute)
    r = arithmetic.round
    parts = linear.parallel(fq, fk, v, s0, z0, causal=options.get("causal", False), arithmetic=arithmetic)
    den = r(parts.den + arithmetic.compute(options.get("eps", 0.0)))
    live = den != 0
    safe = np.where(live, den, 1.0)
    out = r(np.where(live[..., None], parts.num / safe[..., None], 0.0))
    dnum = r(np.where(live[..., None], dout / safe[..., None], 0.0))
    dden = r(np.where(live, -r((dout * out).sum(axis=-1)) / safe, 0.0))
    return dnum, dden


def feature_gradients(fq, fk, v, s0, z0, dnum, dden, arithmetic: Arithmetic = EXACT, **options) -> dict:
    """The gradients with respect to ``f_q``, ``f_k`` (as ``dq``, ``dk``), ``v``, ``S0`` and ``z0``."""
    r, mm = arithmetic.round, arithmetic.matmul
    visible = _visibility(fq.shape[2], fk.shape[2], options.get("causal", False))
    a = np.where(visible, r(mm(fq, _t(fk))), 0.0)
    da = np.where(visible, r(r(mm(dnum, _t(v))) + dden[..., None]), 0.0)
    from_state = r(mm(dnum, _t(s0)) + dden[..., None] * z0[..., None, :])
    return {
        "dq": r(r(mm(da, fk)) + from_state),
        "dk": r(mm(_t(da), fq)),
        "dv": r(mm(_t(a), dnum)),
        "dinitial_state": r(mm(_t(fq), dnum)),
        "dinitial_normalizer": r(mm(_t(fq), dden[..., None])[..., 0]),
    }


def phi_prime(x: np.ndarray, name: str) -> np.ndarray:
    """The derivative of the feature map (``linear.feature_map``); relu's is 0 at 0, as autograd's."""
    if name == "identity":
        return np.ones_like(x)
    if name == "relu":
        return (x > 0).astype(x.dtype)
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))


def checked_dout(dout, q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``dout`` as float64 of ``out``'s shape ``(B, H, N_q, D_v)``, or an error naming it."""
    dout = check.float_array("dout", dout, ndim=4)
    expected = q.shape[:3] + v.shape[3:]
    if dout.shape != expected:
        raise ValueError(f"dout must have out's shape (B, H, N_q, D_v) = {expected}; got {dout.shape}")
    return dout


def _visibility(n_q: int, n_k: int, causal: bool) -> np.ndarray:
    return np.tri(n_q, n_k, dtype=bool) if causal else np.ones((n_q, n_k), bool)


def _t(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)
