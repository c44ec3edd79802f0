"""The two elementwise steps of the online softmax, as plain PyTorch functions.

Everything between the two matrix products of a tile lives here: scaling, masking, the tile's row
maximum, ``exp`` and row sums (:func:`tile_softmax`), and folding a tile's partial result into the
running state (:func:`combine`). Eager PyTorch runs each of these operations as its own pass over
the ``rows x block_k`` score tile in device memory; on CUDA the backend compiles the two functions
with ``torch.compile``: the softmax of a tile becomes, where Inductor does not split the reduction,
one kernel (its online softmax: row maximum and sum in one pass, then exp and the cast) that reads
the score tile twice and writes the probabilities once. A fused flash kernel keeps them in registers
instead, which no composition of PyTorch operations can (``docs/results/*-profile-torch-*`` shows
where the time goes; the benchmark's ``floor`` rows what writing and reading the scores alone
costs). The compiled and eager versions are the same code, and the conformance suite runs
whichever the backend uses.
"""

from __future__ import annotations

import math

import torch

from attnspec.backends._torch_compile import compile_with_limit

#: recompiles allowed to each compiled step (Dynamo's default is 8)
RECOMPILE_LIMIT = 64


def tile_softmax(s: torch.Tensor, scale: float, visible: torch.Tensor | None, dtype: torch.dtype):
    """``exp(scale * s - top)`` over the last axis, with ``top`` the row maximum of the visible scores.

    Returns ``(e, top, row_sum)``: ``e`` in ``dtype`` (the value dtype, as ``P`` is rounded before
    ``P @ V`` in FlashAttention), ``top`` (``-inf`` for a row with no visible key, whose ``e`` is 0)
    and the row sums of ``e`` before rounding, both in the dtype of ``s``.
    """
    s = s * scale
    if visible is not None:
        s = s.masked_fill(~visible, -math.inf)
    # max, subtract, exp, sum with keepdim: the form Inductor turns into one online-softmax pass over
    # the scores (max and sum together) on CUDA, instead of one pass for each
    top = s.amax(dim=-1, keepdim=True)
    e = torch.exp(s - top)
    row_sum = e.sum(dim=-1, keepdim=True)
    empty = top == -math.inf  # no visible key: -inf - (-inf) made NaN above; such a row weighs 0
    e = torch.where(empty, 0.0, e)
    return e.to(dtype), top.squeeze(-1), torch.where(empty, 0.0, row_sum).squeeze(-1)


def combine(
    acc: torch.Tensor,
    m: torch.Tensor,
    total: torch.Tensor,
    weighted: torch.Tensor,
    top: torch.Tensor,
    row_sum: torch.Tensor,
) -> None:
    """Fold a tile's ``(weighted = e @ V, top, row_sum)`` into the running ``(acc, m, total)``, in place.

    Both parts are brought to the new maximum ``max(m, top)``; a part whose maximum is ``-inf``
    (no visible key yet) gets weight 0.
    """
    m_new = torch.maximum(m, top)
    shift = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
    old, new = torch.exp(m - shift), torch.exp(top - shift)
    acc.copy_(acc * old[..., None] + weighted * new[..., None])
    total.copy_(total * old + row_sum * new)
    m.copy_(m_new)


class Steps:
    """The step functions a backend instance uses: eager, or compiled into fused kernels.

    The compiled functions see canonical shapes (scores ``(B, H_kv, G, rows, keys)``, with the
    visibility mask a broadcast view of that shape, never copied; state ``(heads, rows, ...)``),
    detached so that Dynamo guards on no view base, with sizes marked ``symbolic``:
    ``"dynamic"`` (one compile per dtype, masking and pattern of sizes 0 and 1) or ``"unbacked"``
    (no recompile for sizes, only for storage offsets 0 and 1 and stride patterns; but no size
    hints for Inductor's choice of block sizes).
    """

    def __init__(self, compiled: bool, symbolic: str = "unbacked"):
        if symbolic not in ("unbacked", "dynamic"):
            raise ValueError(f"symbolic must be 'unbacked' or 'dynamic'; got {symbolic!r}")
        self.compiled, self.symbolic = compiled, symbolic
        if compiled:
            # one graph per dtype, masking and stride pattern: about a dozen in a conformance run, over
            # Dynamo's default limit of 8 recompiles per function
            self._tile_softmax = compile_with_limit(tile_softmax, RECOMPILE_LIMIT, dynamic=True, fullgraph=True)
            self._combine = compile_with_limit(combine, RECOMPILE_LIMIT, dynamic=True, fullgraph=True)

    def tile_softmax(self, s, scale, visible, dtype):
        """:func:`tile_softmax` over the last axis of ``s`` (any leading shape)."""
        if not self.compiled:
            return tile_softmax(s, scale, visible, dtype)
        full = s.reshape(*(1,) * (5 - s.dim()), *s.shape)
        if visible is not None:
            visible = visible.reshape(*(1,) * (5 - visible.dim()), *visible.shape).expand(full.shape)
        full, visible = _symbolic(self.symbolic, full, visible)
        e, top, row_sum = self._tile_softmax(full, scale, visible, dtype)
        return e.view(s.shape), top.view(s.shape[:-1]), row_sum.view(s.shape[:-1])

    def combine(self, acc, m, total, weighted, top, row_sum) -> None:
        """:func:`combine` for state ``(B, H_kv, G, rows, ...)`` (views into the running state)."""
        if not self.compiled:
            return combine(acc, m, total, weighted, top, row_sum)
        heads = [x.flatten(0, 2) for x in (acc, m, total, weighted, top, row_sum)]  # views, written in place
        self._combine(*_symbolic(self.symbolic, *heads))


def _symbolic(how: str, *tensors):
    """The tensors detached (Dynamo then guards on no view base), every size marked ``how``."""
    mark = torch._dynamo.decorators.mark_unbacked if how == "unbacked" else torch._dynamo.mark_dynamic
    out = []
    for x in tensors:
        if x is not None:
            x = x.detach()
            for dim in range(x.dim()):
                mark(x, dim)
        out.append(x)
    return out


EAGER = Steps(compiled=False)
