"""Host side of the backward kernels (:mod:`.backward`): the forward's ``out`` and LSE, ``D``, then the
key-block pass (``dK``, ``dV``) and the query-block pass (``dQ``, and ``dbias`` written per tile).

A bias gradient is the full ``(B, H_q, N_q, N_k)`` float32 ``dS`` (zero where no tile was
visited), summed here over the axes the bias was broadcast along: the kernel stores each tile once,
without atomics, and the reduction of broadcast axes is PyTorch's.
"""

from __future__ import annotations

import torch
import triton

from attnspec.backends.torch_tiled.kernel import Problem

from . import configs
from .backward import dkdv_bwd, dq_bwd, row_dot
from .launch import CAUSAL_CODES, Lens, _aligned, _even, _pow2, _strided, attention


def backward(p: Problem, lens: Lens, dout: torch.Tensor, bias_shape: tuple | None) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv)``, and ``dbias`` in ``bias_shape`` (float32) when a bias is given; ``dout``
    is ``(B, H_q, N_q, D_v)`` in the input dtype."""
    b, h_kv, group, n_q, d_qk = p.q.shape
    n_k, d_v, h_q = p.k.shape[2], p.v.shape[3], h_kv * group
    q = p.q.reshape(b, h_q, n_q, d_qk)
    out, lse = attention(p, lens)
    dout, lse = dout.contiguous(), lse.contiguous()
    delta = row_sums(out.contiguous(), dout, lens)
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, p.k, p.v))
    dbias = None if bias_shape is None else torch.zeros((b, h_q, n_q, n_k), dtype=torch.float32, device=q.device)
    cfg_kv, cfg_q = configs.choose_backward(q, d_qk, d_v)
    shared = _shared_arguments(p, q, dout, lens)
    if b * h_kv and n_k:
        dkdv_bwd[(triton.cdiv(n_k, cfg_kv.block_n), b * h_kv)](
            q, p.k, p.v, dout, dk, dv, lse, delta, *shared["pointers"], *shared["strides"], h_kv,
            *shared["sizes"], **shared["constants"], **tiles(cfg_kv),
        )  # fmt: skip
    if b * h_q and n_q:
        scratch = _strided(dbias, q, 4)
        dq_bwd[(triton.cdiv(n_q, cfg_q.block_m), b * h_q)](
            q, p.k, p.v, dout, dq, scratch[0], lse, delta, *shared["pointers"], *shared["strides"],
            *scratch[1][:3], h_q, *shared["sizes"], **shared["constants"], **tiles(cfg_q),
        )  # fmt: skip
    grads = (dq, dk, dv)
    return grads if dbias is None or bias_shape is None else (*grads, unbroadcast(dbias, bias_shape))


def row_sums(out: torch.Tensor, dout: torch.Tensor, lens: Lens) -> torch.Tensor:
    """``D = rowsum(out * dout)`` ``(B, H_q, N_q)`` float32, 0 past ``q_lens``; both contiguous."""
    b, h_q, n_q, d_v = out.shape
    delta = torch.empty((b, h_q, n_q), dtype=torch.float32, device=out.device)
    block_m = configs.INTERPRETER.block_m if configs.interpreted(out) else 64
    if b * h_q * n_q:
        row_dot[(triton.cdiv(n_q, block_m), b * h_q)](
            out, dout, delta, lens.q if lens.q is not None else out, *out.stride(), h_q, n_q, d_v,
            BLOCK_M=block_m, BLOCK_DV=_pow2(d_v), HAS_Q_LENS=lens.q is not None,
        )  # fmt: skip
    return delta


def unbroadcast(full: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``full`` ``(B, H_q, N_q, N_k)`` summed back to ``shape``, the shape the bias was broadcast from."""
    padded = (1,) * (4 - len(shape)) + tuple(shape)
    axes = [axis for axis in range(4) if padded[axis] == 1 and full.shape[axis] != 1]
    return (full.sum(dim=axes, keepdim=True) if axes else full).reshape(shape)


def _shared_arguments(p: Problem, q: torch.Tensor, dout: torch.Tensor, lens: Lens) -> dict:
    """The arguments both passes take, grouped as their signatures list them."""
    b, h_q, _, d_qk = q.shape
    mask, bias = _strided(p.mask, q, 4), _strided(p.bias, q, 4)
    slopes = _strided(None if p.slopes is None else p.slopes.reshape(b, h_q), q, 2)
    window = p.window or (-1, -1)
    d_v = p.v.shape[3]
    return {
        "pointers": (mask[0], bias[0], slopes[0], q if lens.q is None else lens.q, q if lens.kv is None else lens.kv),
        "strides": (*q.stride(), *p.k.stride(), *p.v.stride(), *dout.stride(), *mask[1], *bias[1], *slopes[1]),
        "sizes": (q.shape[2], p.k.shape[2], d_qk, d_v, p.q.shape[2], p.scale, p.softcap or 1.0, *window),
        "constants": dict(
            BLOCK_D=_pow2(d_qk),
            BLOCK_DV=_pow2(d_v),
            EVEN_D=_even(d_qk, d_v),
            CAUSAL=CAUSAL_CODES[p.causal],
            WINDOW=p.window is not None,
            HAS_MASK=p.mask is not None,
            HAS_BIAS=p.bias is not None,
            HAS_ALIBI=p.slopes is not None,
            HAS_SOFTCAP=p.softcap is not None,
            HAS_Q_LENS=lens.q is not None,
            HAS_KV_LENS=lens.kv is not None,
            PRECISION=configs.precision(q),
            ALIGNED=_aligned(q, p.k, p.v, dout),
        ),
    }


def tiles(cfg: configs.Config) -> dict:
    return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
