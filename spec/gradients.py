"""Gradients: the backward pass of ``sdpa`` as clauses.

The backward pass is defined as the exact derivative of the forward clause: nothing about how a
kernel computes it (recomputing ``P`` from the saved LSE as FlashAttention-2 does, autograd
through a tiled forward, atomics or not) is normative, only the gradients it returns. Scope:
``sdpa`` with every option of its forward clauses; the other families' backward passes are not
yet clauses.
"""

from __future__ import annotations

from typing import Literal

from attnspec import sdpa as _forward  # noqa: F401 (the forward's clauses come first)
from attnspec.clauses import Array, clause, operation


@operation
def sdpa_backward(
    q: Array,
    k: Array,
    v: Array,
    dout: Array,
    *,
    scale: float | None = None,
    causal: Literal["top_left", "bottom_right"] | None = None,
    window: tuple[int, int] | None = None,
    window_align: Literal["bottom_right", "top_left"] | None = None,
    mask: Array | None = None,
    bias: Array | None = None,
    softcap: float | None = None,
    alibi_slopes: Array | None = None,
    q_lens: Array | None = None,
    kv_lens: Array | None = None,
) -> tuple[Array, ...]:
    """The gradients of ``sdpa``: ``dq``, ``dk``, ``dv`` (and ``dbias``), as clause ``sdpa.grad`` defines them.

    Parameters
    ----------
    q, k, v
        As for ``sdpa``.
    dout
        ``(B, H_q, N_q, D_v)``, the gradient of the output, in the dtype of ``q``.
    scale, causal, window, window_align, mask, bias, softcap, alibi_slopes, q_lens, kv_lens
        As for ``sdpa``.

    Returns
    -------
    (dq, dk, dv) or (dq, dk, dv, dbias)
        ``dq`` in the shape of ``q``, ``dk`` of ``k``, ``dv`` of ``v``, each in the input dtype;
        ``dbias`` (in the shape of ``bias``, in its dtype) exactly when a bias is given.

    Notes
    -----
    The formulas are the FlashAttention-2 backward (Dao, 2023, Algorithm 2) written for the exact
    result: ``dS = P * (dP - D)`` uses ``D = rowsum(dout * out)`` in place of
    ``rowsum(P * dP)``, the two being equal in real arithmetic. PyTorch's ``scaled_dot_product_attention``
    returns no gradient for a boolean mask and sums an additive mask's gradient like ``dbias``
    here; FlashAttention returns ``dq, dk, dv`` only (its ALiBi slopes and softcap get no gradient
    of their own). The reference is :func:`attnspec.reference.sdpa_grad.sdpa_backward`.

    .. versionadded:: 0.2.0
    """


@clause("sdpa.grad", op="sdpa_backward", since="0.2.0")
def sdpa_grad():
    """The gradients of ``sdpa`` are the exact derivative of ``out`` as the ``sdpa`` clause defines it.

    With ``out = sdpa(q, k, v, **options)``, ``dout`` the gradient of a scalar loss with respect to
    ``out``, ``g = kv_head(h)``, ``R = scale * q . k`` the raw score, ``S`` the final score (after
    softcap, bias and ALiBi) and ``P`` the attention probabilities (exactly 0 at keys outside
    ``V(i)``)::

        D[h, i]      = sum_d dout[h, i, d] * out[h, i, d]
        dP[h, i, j]  = dout[h, i] . v[g, j]
        dS[h, i, j]  = P[h, i, j] * (dP[h, i, j] - D[h, i])
        dR[h, i, j]  = dS[h, i, j] * (1 - tanh(R[h, i, j] / c)^2)   # softcap c (sdpa.grad.softcap); dS without
        dq[h, i]     = scale * sum_j dR[h, i, j] * k[g, j]
        dk[g, j]     = scale * sum over h in group g, i of dR[h, i, j] * q[h, i]    # sdpa.grad.gqa
        dv[g, j]     = sum over h in group g, i of P[h, i, j] * dout[h, i]
        dbias        = dS, summed over the axes the bias is broadcast along   # sdpa.grad.bias

    - Every option of ``sdpa`` applies with its forward meaning (``D_v != D_qk``, ``N_q != N_k``,
      causal both ways, window, mask, lengths, ALiBi, softcap, bias). A backend that declares
      ``sdpa.grad`` MUST compute the gradient of every forward option it declares, or decline the
      case (:class:`attnspec.Unsupported`).
    - ``D`` is the row sum of ``dout * out`` with ``out`` the exact forward result; ``D`` computed
      from a forward output rounded to a lower precision than the backward computes in is an
      error of that size (FlashAttention-2 computes it from the stored output in its dtype: at 16
      bits that rounding is within the tolerance; a float32 kernel that rounds ``out`` to 16 bits
      first is not).
    - The gradient MUST be the derivative of the natural-log softmax: a kernel that saves the LSE
      in base 2 (``log2``) for its forward MUST convert it before recomputing ``P``.
    - ALiBi slopes, the mask and the lengths are constants: they get no gradient.
    - Accuracy is judged by the tolerance policy (:func:`attnspec.tolerance.gradient_tolerance`).

    .. versionadded:: 0.2.0
    """


@clause("sdpa.grad.hidden", op="sdpa_backward", since="0.2.0")
def sdpa_grad_hidden():
    """Hidden and padded positions get exactly zero gradient; rows without keys are inert.

    - ``dk[g, j]`` and ``dv[g, j]`` MUST be exactly 0 for a key ``j`` that no query of group ``g``
      sees (hidden by causal, window, mask, ``-inf`` bias or past ``kv_lens``), and ``dq[h, i]``
      exactly 0 for a query that sees no key (``sdpa.fully_masked``) or lies past ``q_lens``;
      ``dbias`` is exactly 0 wherever the key is hidden.
    - A query row without visible keys contributes exactly 0 to every gradient and never NaN,
      whatever its ``dout``.
    - As in the forward pass, positions past the lengths MUST NOT be read: NaN stored in ``q``,
      ``k``, ``v`` or ``dout`` past ``q_lens``/``kv_lens`` leaves every gradient finite, and the
      gradients at those positions are exactly 0.

    .. versionadded:: 0.2.0
    """


@clause("sdpa.grad.gqa", op="sdpa_backward", since="0.2.0")
def sdpa_grad_gqa():
    """With ``H_q = G * H_kv``, ``dk`` and ``dv`` of KV head ``g`` sum over its ``G`` query heads.

    ``dk`` and ``dv`` MUST have the shape of ``k`` and ``v`` (``H_kv`` heads): the sum over the
    group is part of the operation, not left to the caller. A kernel that repeats K and V to
    ``H_q`` heads computes per-head gradients that MUST then be summed over each group (not
    averaged, not the first head's).

    .. versionadded:: 0.2.0
    """


@clause("sdpa.grad.scale", op="sdpa_backward", since="0.2.0")
def sdpa_grad_scale():
    """``scale`` multiplies both ``dq`` and ``dk`` (it multiplies ``q . k`` in the forward pass).

    With the default ``1 / sqrt(D_qk)`` or an explicit scale, ``dq = scale * dR k`` and
    ``dk = scale * dR^T q``; ``dv`` does not depend on it except through ``P``. A kernel that
    folds the scale into ``q`` before the forward pass MUST apply it to ``dq`` again.

    .. versionadded:: 0.2.0
    """


@clause("sdpa.grad.softcap", op="sdpa_backward", since="0.2.0")
def sdpa_grad_softcap():
    """With ``softcap = c``, ``dR = dS * (1 - tanh(R / c)^2)`` with ``R = scale * q . k``.

    The derivative of ``c * tanh(R / c)`` is taken at the raw score ``R``; bias and ALiBi, added
    after the cap, do not enter it.

    .. versionadded:: 0.2.0
    """


@clause("sdpa.grad.bias", op="sdpa_backward", since="0.2.0")
def sdpa_grad_bias():
    """``dbias = dS``, summed over every axis along which ``bias`` was broadcast to ``(B, H_q, N_q, N_k)``.

    ``dbias`` has the shape the caller passed (a ``(1, 1, N_q, N_k)`` bias gets the sum over batch
    items and heads), is returned as the fourth result exactly when a bias is given, and is exactly
    0 at keys hidden by another rule (``sdpa.grad.hidden``).

    .. versionadded:: 0.2.0
    """
