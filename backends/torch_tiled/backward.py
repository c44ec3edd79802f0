"""Clause ``sdpa.grad``: the FlashAttention-2 backward in PyTorch operations, tile by tile.

The forward pass (:func:`.kernel.forward`) saves the output and the natural-log LSE; the backward
recomputes each key tile's probabilities from them, ``P = exp(S - lse)``, and never holds more
than one ``rows x block_k`` tile of scores per head. Per key tile::

    dv[tile] += P^T dout                         (summed over the query heads of each KV head)
    dS = P * (dout v^T - D),  D = rowsum(dout * out)
    dR = dS * (1 - tanh(R / c)^2)                with softcap c, else dS
    dq       += scale * dR k[tile]
    dk[tile] += scale * dR^T q                   (summed over the group)
    dbias    += dS, summed over the axes the bias was broadcast along

Key tiles outside the causal, window and length rules are skipped as in the forward pass; the
row range of a tile is the forward's. Everything is accumulated in float32 (float64 for float64
inputs). Positions past ``q_lens``/``kv_lens`` are zeroed once before the loop: they are never
read, and a NaN stored there cannot reach a product with a zero weight.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from attnspec import validation as _checks
from attnspec.backends import _torch_arrays as arrays
from attnspec.backends import _torch_visibility as vis
from attnspec.backends.torch_tiled import kernel


def backward(p: kernel.Problem, dout, bias_shape: tuple | None, block_k: int) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv)`` and ``dbias`` (in ``bias_shape``) when a bias is given, in the accumulator dtype."""
    b, h_kv, g, n_q, n_k, d_v = p.shape
    dout = checked_dout(dout, p)
    p = _inside_lengths(p)
    out, lse = kernel.forward(p, block_k=block_k)
    do = _rows_inside(p, dout.reshape(b, h_kv, g, n_q, d_v).to(p.acc))
    d_row = (do * out.reshape(do.shape)).sum(-1)
    lse = lse.reshape(b, h_kv, g, n_q)
    dq, dk, dv = (torch.zeros(x.shape, dtype=p.acc, device=x.device) for x in (p.q, p.k, p.v))
    dbias = None if bias_shape is None else torch.zeros(_four_dims(bias_shape), dtype=p.acc, device=p.q.device)
    for c0 in range(0, n_k, block_k):
        c1 = min(c0 + block_k, n_k)
        r0, r1 = vis.row_range(p.rules, c0, c1)
        if r0 < r1:
            ds = _tile(p, r0, r1, c0, c1, do, d_row, lse, dq, dk, dv)
            if dbias is not None:
                _add_bias_gradient(dbias, ds.reshape(b, h_kv * g, r1 - r0, c1 - c0), r0, r1, c0, c1)
    grads = (dq.reshape(b, h_kv * g, n_q, p.q.shape[-1]), dk, dv)
    return grads if dbias is None or bias_shape is None else (*grads, dbias.reshape(bias_shape))


def _tile(p: kernel.Problem, r0, r1, c0, c1, do, d_row, lse, dq, dk, dv) -> torch.Tensor:
    """One key tile's contributions to ``dq``, ``dk``, ``dv`` (in place); returns its ``dS``."""
    s, _ = kernel.tile_scores(p, r0, r1, c0, c1, scaled=True)
    rows_lse = lse[..., r0:r1, None]
    prob = torch.exp(s - torch.where(torch.isfinite(rows_lse), rows_lse, 0.0))
    keep = torch.isfinite(rows_lse)
    if not kernel.tile_fully_visible(p, r0, r1, c0, c1):
        keep = keep & kernel.tile_visible(p, r0, r1, c0, c1)
    prob = torch.where(keep, prob, 0.0)
    q, k, v = (x.to(p.acc) for x in (p.q[..., r0:r1, :], p.k[:, :, c0:c1], p.v[:, :, c0:c1]))
    rows = do[..., r0:r1, :]
    dv[:, :, c0:c1] += torch.einsum("bhgij,bhgid->bhjd", prob, rows)
    ds = prob * (torch.einsum("bhgid,bhjd->bhgij", rows, v) - d_row[..., r0:r1, None])
    dr = ds
    if p.softcap is not None:
        raw = torch.einsum("bhgid,bhjd->bhgij", q, k) * p.scale
        dr = ds * (1 - torch.tanh(raw / p.softcap) ** 2)
    dq[..., r0:r1, :] += p.scale * torch.einsum("bhgij,bhjd->bhgid", dr, k)
    dk[:, :, c0:c1] += p.scale * torch.einsum("bhgij,bhgid->bhjd", dr, q)
    return ds


def _add_bias_gradient(dbias: torch.Tensor, ds: torch.Tensor, r0, r1, c0, c1) -> None:
    """Add a tile's ``dS`` ``(B, H_q, rows, cols)`` into ``dbias`` (4-d, 1 on its broadcast axes)."""
    summed = [axis for axis in range(4) if dbias.shape[axis] == 1 and ds.shape[axis] != 1]
    if summed:
        ds = ds.sum(dim=summed, keepdim=True)
    rows = slice(None) if dbias.shape[2] == 1 else slice(r0, r1)
    cols = slice(None) if dbias.shape[3] == 1 else slice(c0, c1)
    dbias[:, :, rows, cols] += ds


def _four_dims(shape: tuple) -> tuple:
    return (1,) * (4 - len(shape)) + tuple(shape)


def checked_dout(dout, p: kernel.Problem) -> torch.Tensor:
    """``dout`` as a tensor of ``q``'s dtype and ``out``'s shape, or an error naming it (the torch and triton backwards)."""
    b, h_kv, g, n_q, _, d_v = p.shape
    dout = arrays.tensor("dout", dout)
    _checks.same_dtype(q=p.q, dout=dout)
    if tuple(dout.shape) != (b, h_kv * g, n_q, d_v):
        raise ValueError(
            f"dout must have out's shape (B, H_q, N_q, D_v) = {(b, h_kv * g, n_q, d_v)}; got {tuple(dout.shape)}"
        )
    return dout


def _inside_lengths(p: kernel.Problem) -> kernel.Problem:
    """``p`` with ``q`` zeroed past ``q_lens`` and ``k``, ``v`` past ``kv_lens`` (copies only where lengths cut)."""
    n_q, n_k = p.q.shape[3], p.k.shape[2]
    q, k, v = p.q, p.k, p.v
    if (p.q_lens < n_q).any():
        q = _rows_inside(p, q)
    if (p.kv_lens < n_k).any():
        present = p.on_device.key_present(
            torch.arange(k.shape[0], device=k.device)[:, None], torch.arange(n_k, device=k.device)[None, :]
        )[:, None, :, None]
        k, v = (torch.where(present, x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in (k, v))
    return replace(p, q=q, k=k, v=v)


def _rows_inside(p: kernel.Problem, x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, H_kv, G, N_q, D)`` with the rows past ``q_lens`` zeroed."""
    lens = torch.as_tensor(p.q_lens, device=x.device)
    inside = torch.arange(x.shape[3], device=x.device)[None, :] < lens[:, None]
    return torch.where(inside[:, None, None, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
