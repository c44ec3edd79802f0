"""Gradients: the backward pass of ``sdpa`` as clauses.

The backward pass is defined as the exact derivative of the forward clause: nothing about how a
kernel computes it (recomputing ``P`` from the saved LSE as FlashAttention-2 does, autograd
through a tiled forward, atomics or not) is normative, only the gradients it returns. Scope:
``sdpa`` with every option of its forward clauses, and the families whose kernels ship a backward
pass: linear attention (``linear.grad``), retention (``retention.grad``) and block-sparse attention
(``sparse.block_sparse.grad``), each the exact derivative of its forward clause, each clause stating
which options it covers. The other families' backward passes are not yet clauses.
"""

from __future__ import annotations

from typing import Literal

from attnspec import linear as _linear  # noqa: F401 (the forward's clauses come first)
from attnspec import retention as _retention  # noqa: F401
from attnspec import sdpa as _forward  # noqa: F401
from attnspec import sparse as _sparse  # noqa: F401
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


@operation
def linear_attention_backward(
    q: Array,
    k: Array,
    v: Array,
    dout: Array,
    *,
    feature_map: str = "elu+1",
    causal: bool = False,
    form: str = "parallel",
    chunk_size: int | None = None,
    normalize: bool = True,
    scale: float = 1.0,
    eps: float = 0.0,
    initial_state: Array | None = None,
    initial_normalizer: Array | None = None,
) -> tuple[Array, ...]:
    """The gradients of ``linear_attention``'s output, as clause ``linear.grad`` defines them.

    Parameters
    ----------
    q, k, v, feature_map, causal, form, chunk_size, normalize, scale, eps, initial_state, initial_normalizer
        As for ``linear_attention`` (whose ``output_final_state`` has no gradient here).
    dout
        ``(B, H, N_q, D_v)``, the gradient of the output, in the dtype of ``q``.

    Returns
    -------
    (dq, dk, dv), then ``dS0`` if ``initial_state`` is given, then ``dz0`` if ``initial_normalizer`` is
        ``dq``, ``dk``, ``dv`` in the shapes and dtype of ``q``, ``k``, ``v``; ``dS0`` and ``dz0`` in the
        shapes and dtypes of the initial state and normalizer.

    Notes
    -----
    flash-linear-attention's ``chunk_linear_attn`` and fast-transformers' causal product ship such a
    backward. The reference is :func:`attnspec.reference.linear_grad.linear_attention_backward`.

    .. versionadded:: 0.2.0
    """


@operation
def retention_backward(
    q: Array,
    k: Array,
    v: Array,
    dout: Array,
    *,
    gammas: Array,
    form: str = "parallel",
    chunk_size: int | None = None,
    scale: float | None = None,
    initial_state: Array | None = None,
) -> tuple[Array, ...]:
    """The gradients of ``retention``'s output, as clause ``retention.grad`` defines them.

    Parameters
    ----------
    q, k, v, gammas, form, chunk_size, scale, initial_state
        As for ``retention`` (whose ``return_state`` has no gradient here).
    dout
        ``(B, H, N, D_v)``, the gradient of the output, in the dtype of ``q``.

    Returns
    -------
    (dq, dk, dv) or (dq, dk, dv, dS0)
        In the shapes and dtypes of ``q``, ``k``, ``v`` (and ``initial_state``, exactly when one is given).

    Notes
    -----
    flash-linear-attention's ``chunk_retention`` and torchscale's chunkwise retention ship such a
    backward. The reference is :func:`attnspec.reference.retention_grad.retention_backward`.

    .. versionadded:: 0.2.0
    """


@operation
def sparse_backward(
    q: Array, k: Array, v: Array, dout: Array, *, pattern: str, scale: float | None = None, **pattern_params
) -> tuple[Array, Array, Array]:
    """The gradients of ``sparse``'s output: ``(dq, dk, dv)``, as clause ``sparse.block_sparse.grad`` defines them.

    Parameters
    ----------
    q, k, v, pattern, scale, **pattern_params
        As for ``sparse``.
    dout
        ``(B, H_q, N_q, D_v)``, the gradient of the output, in the dtype of ``q``.

    Returns
    -------
    (dq, dk, dv)
        In the shapes and dtypes of ``q``, ``k``, ``v``.

    Notes
    -----
    The reference computes it for every pattern (:func:`attnspec.reference.sparse_grad.sparse_backward`);
    only ``block_sparse`` is a clause, the pattern whose kernels (Triton's block-sparse attention,
    DeepSpeed Sparse Attention, FlexAttention with a ``BlockMask``) ship a backward pass.

    .. versionadded:: 0.2.0
    """


@clause("linear.grad", op="linear_attention_backward", since="0.2.0")
def linear_grad():
    """The gradients of ``linear_attention`` are the exact derivative of ``out`` as ``linear.parallel`` defines it.

    With ``f_q = scale * phi(q)``, ``f_k = phi(k)``, ``M`` the visibility (all ones, or ``j <= i``
    under ``linear.causal``), ``A = (f_q f_k^T) * M``, ``num = A v + f_q S0``,
    ``den = rowsum(A) + f_q z0``, ``dout`` the gradient of ``out`` and, with ``normalize=True``,
    ``r_i = den_i + eps``::

        dnum[i]  = dout[i] / r_i                       (dout[i] without normalize)
        dden[i]  = -sum_d dout[i, d] * out[i, d] / r_i (0 without normalize)
        dA       = (dnum v^T + dden 1^T) * M
        df_q     = dA f_k + dnum S0^T + dden z0^T        df_k = dA^T f_q
        dq       = scale * df_q * phi'(q)                dk   = df_k * phi'(k)
        dv       = A^T dnum       dS0 = f_q^T dnum       dz0  = f_q^T dden

    with ``phi'`` element-wise: ``elu+1``: 1 for ``x > 0``, ``exp(x)`` for ``x <= 0``; ``relu``: 1 for
    ``x > 0``, 0 for ``x <= 0`` (0 at ``x = 0``, as autograd gives); ``identity``: 1.

    - Scope: every option of the forward clause: the three feature maps, ``causal`` (the diagonal
      included), ``normalize`` with any ``eps``, ``scale``, ``initial_state`` and
      ``initial_normalizer`` (their gradients ``dS0`` and ``dz0`` are returned exactly when each is
      given). ``form`` and ``chunk_size`` choose an evaluation order of one function, so every form
      has this gradient; a backend that declares ``linear.grad`` MUST compute it for the forms it
      declares, or decline the case (:class:`attnspec.Unsupported`). The final state returned by
      ``output_final_state`` gets no gradient here (the gradient of ``out`` only).
    - A row with ``den_i + eps = 0`` has ``out_i = 0`` whatever its inputs (``linear.normalizer``):
      it contributes exactly 0 to every gradient and is never NaN.
    - Under ``causal``, keys after ``i`` get no gradient from row ``i``: ``dk[j]`` and ``dv[j]`` of
      the last key come from the last row alone.
    - Accuracy is judged by the tolerance policy (:func:`attnspec.tolerance.gradient_tolerance`),
      the naive run being this backward in the dtype.

    .. versionadded:: 0.2.0
    """


@clause("retention.grad", op="retention_backward", since="0.2.0")
def retention_grad():
    """The gradients of ``retention`` are the exact derivative of ``out`` as ``retention.parallel`` defines it.

    With ``W = scale * (q k^T) * D`` (``D[n, m] = g^(n - m)`` for ``m <= n``, else 0, ``g = gammas[h]``),
    ``c[n] = scale * g^(n + 1)`` and ``S0`` the initial state (zeros when not given)::

        dW   = (dout v^T) * D
        dq   = scale * dW k + c * (dout S0^T)
        dk   = scale * dW^T q
        dv   = W^T dout
        dS0  = sum over n of c[n] * outer(q[n], dout[n])     (returned exactly when S0 is given)

    - Scope: every form (``"parallel"``, ``"recurrent"``, ``"chunkwise"`` with any ``chunk_size``)
      computes one function and has this gradient; ``scale`` default or explicit;
      ``initial_state`` given or not. A backend that declares ``retention.grad`` MUST compute it
      for the forms it declares, or decline the case (:class:`attnspec.Unsupported`).
    - The decays are fixed per-head constants, not parameters: ``gammas`` gets no gradient (a
      kernel that learns them is outside this clause). The final state of ``return_state`` gets
      no gradient here (the gradient of ``out`` only).
    - The decay reaches the backward pass exactly as the forward's: ``dk[m]`` and ``dv[m]`` collect
      ``g^(n - m)`` from every ``n >= m``, never from ``n < m``; ``g = 0`` leaves the diagonal only,
      ``g = 1`` is causal linear attention's gradient.
    - Accuracy is judged by the tolerance policy (:func:`attnspec.tolerance.gradient_tolerance`),
      the naive run being this backward in the dtype.

    .. versionadded:: 0.2.0
    """


@clause("sparse.block_sparse.grad", op="sparse_backward", since="0.2.0")
def sparse_block_sparse_grad():
    """The gradients of ``sparse`` with ``pattern="block_sparse"`` are ``sdpa.grad`` with the layout's mask.

    ``sparse_backward(q, k, v, dout, pattern="block_sparse", scale=scale, **params)`` MUST equal,
    within the tolerance policy (:func:`attnspec.tolerance.gradient_tolerance`)::

        sdpa_backward(q, k, v, dout, scale=scale, mask=sparse_mask("block_sparse", N_q, N_k, **params))

    - Masked blocks get exactly zero gradient: ``dk[g, j]`` and ``dv[g, j]`` are exactly 0 for a
      key that no visible tile of any query head of group ``g`` holds, and ``dq[h, i]`` is exactly
      0 for a query whose layout row is empty, never NaN (``sdpa.grad.hidden``).
    - GQA sums over the group (``sdpa.grad.gqa``); rows are bottom-right aligned as in ``sparse``.
    - Scope: the ``block_sparse`` pattern, with ``scale``. The other patterns' gradients, defined
      by the same rule, are not clauses.

    .. versionadded:: 0.2.0
    """
