"""``sdpa_backward`` through PyTorch's autograd, for the adapters of other people's kernels.

``torch-sdpa`` and ``flex`` have no backward of their own to call: the gradients are what
``torch.autograd`` computes from their forward, which is exactly what a training loop with those
kernels gets. The bias, when given, is a leaf that requires a gradient, so that ``dbias`` is the
gradient PyTorch propagates to it through the adapter's additive mask or ``score_mod``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnspec import validation as _checks
from attnspec.backends import _torch_arrays as arrays
from attnspec.contract import Unsupported


def backward(name: str, forward: Callable, q, k, v, dout, options: dict) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv[, dbias])`` of ``sum(forward(q, k, v, **options) * dout)``; a kernel that has no
    backward for the call (PyTorch raises "not supported"/"not implemented") declines it."""
    dout = arrays.tensor("dout", dout)
    _checks.same_dtype(q=q, dout=dout)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    bias = options.get("bias")
    if bias is not None:
        bias = arrays.tensor("bias", bias).detach().clone().requires_grad_()
        options = {**options, "bias": bias}
        leaves.append(bias)
    with torch.enable_grad():
        out = forward(*leaves[:3], **options)
        if tuple(dout.shape) != tuple(out.shape):
            raise ValueError(
                f"dout must have out's shape (B, H_q, N_q, D_v) = {tuple(out.shape)}; got {tuple(dout.shape)}"
            )
        try:
            grads = torch.autograd.grad(out, leaves, dout, allow_unused=True)
        except (RuntimeError, NotImplementedError) as exc:
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if any(w in text.lower() for w in ("not supported", "not implemented", "no available kernel")):
                raise Unsupported(f"{name}: no backward for this call: {text}") from None
            raise
    return tuple(torch.zeros_like(x) if g is None else g.to(x.dtype) for g, x in zip(grads, leaves, strict=True))
