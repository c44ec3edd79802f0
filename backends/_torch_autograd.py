"""Backward passes through PyTorch's autograd, for the adapters of other people's kernels.

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


def autograd(forward: Callable, inputs: dict, dout, **options) -> tuple[torch.Tensor, ...]:
    """The gradients of ``sum(forward(**inputs, **options) * dout)`` with respect to each given
    (not None) input, in its dtype; zeros for an input the output does not depend on."""
    leaves = {name: x.detach().clone().requires_grad_() for name, x in inputs.items() if x is not None}
    dout = arrays.tensor("dout", dout)
    _checks.same_dtype(q=inputs["q"], dout=dout)
    with torch.enable_grad():
        out = forward(**leaves, **options)
        if tuple(dout.shape) != tuple(out.shape):
            raise ValueError(f"dout must have out's shape {tuple(out.shape)}; got {tuple(dout.shape)}")
        grads = torch.autograd.grad(out, list(leaves.values()), dout, allow_unused=True)
    return tuple(
        torch.zeros_like(x) if g is None else g.to(x.dtype) for g, x in zip(grads, leaves.values(), strict=True)
    )


def backward(name: str, forward: Callable, q, k, v, dout, options: dict) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv[, dbias])`` of ``sum(forward(q, k, v, **options) * dout)``; a kernel that has no
    backward for the call (PyTorch raises "not supported"/"not implemented") declines it."""
    inputs = {"q": q, "k": k, "v": v}
    if options.get("bias") is not None:
        inputs["bias"] = arrays.tensor("bias", options["bias"])
    rest = {key: value for key, value in options.items() if key != "bias"}
    try:
        return autograd(forward, inputs, dout, **rest)
    except (RuntimeError, NotImplementedError) as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if any(w in text.lower() for w in ("not supported", "not implemented", "no available kernel")):
            raise Unsupported(f"{name}: no backward for this call: {text}") from None
        raise
