"""Host side of the Triton kernels: arguments checked, tiles chosen, grids launched.

Arguments are checked by the same code as the ``torch`` backend (``torch_tiled.kernel.prepare``:
the same errors as the reference). Broadcast masks and biases reach the kernel as strided views
(stride 0 along broadcast axes), never copied to the full ``(B, H_q, N_q, N_k)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton

from attnspec.backends.torch_tiled.kernel import Problem

from . import configs
from .attention import attention_fwd
from .attention_tma import attention_fwd_tma
from .block_sparse import block_sparse_fwd
from .merge import merge_partials

CAUSAL_CODES = {None: 0, "top_left": 1, "bottom_right": 2}


@dataclass(frozen=True)
class Lens:
    """Per-batch lengths on the device, or None where every row/key is valid."""

    q: torch.Tensor | None
    kv: torch.Tensor | None


def host_lens(p: Problem) -> Lens:
    """The lengths ``prepare`` checked on the host, sent to the device only where they cut something."""
    n_q, n_k = p.q.shape[3], p.k.shape[2]

    def device(lens, n):
        return None if (lens == n).all() else torch.as_tensor(lens, dtype=torch.int32, device=p.q.device)

    return Lens(device(p.q_lens, n_q), device(p.kv_lens, n_k))


def attention(
    p: Problem,
    lens: Lens,
    *,
    num_splits: int = 1,
    pack_gqa: bool = False,
    tile: tuple[int, int] | None = None,
    config: configs.Config | None = None,
):
    """``(out, lse)``: ``out`` ``(B, H_q, N_q, D_v)`` in the input dtype, ``lse`` float32.

    ``num_splits > 1`` splits the keys into contiguous ranges (one program column each) and merges
    the float32 partials by their LSE. ``pack_gqa`` puts the query heads of a KV head in the same
    tile (decode). ``tile`` forces ``(BLOCK_M, BLOCK_N)``, ``config`` the whole launch
    configuration (the tuning sweep); by default both come from :func:`.configs.choose`.
    """
    b, h_kv, group, n_q, d_qk = p.q.shape
    n_k, d_v, h_q = p.k.shape[2], p.v.shape[3], h_kv * group
    q = p.q.reshape(b, h_q, n_q, d_qk)
    rows, heads = (group * n_q, h_kv) if pack_gqa else (n_q, h_q)
    if config is None and tile is None and num_splits == 1 and not pack_gqa and q.is_cuda:
        causal, tma = p.causal is not None, tma_eligible(p, lens)
        config = configs.choose_forward(q.dtype, d_qk, d_v, rows=rows, n=max(n_q, n_k), causal=causal, tma=tma)
    if config is not None and config.tma:
        return attention_tma(p, config)
    cfg = config or configs.choose(q, d_qk, d_v, rows=rows, n_k=n_k, tile=tile)
    # Splits of whole key blocks; splits past the last key would hold no key and are not launched.
    split_len = triton.cdiv(triton.cdiv(max(n_k, 1), num_splits), cfg.block_n) * cfg.block_n
    num_splits = triton.cdiv(max(n_k, 1), split_len)
    if num_splits > 1:
        out = torch.empty((num_splits, b, h_q, n_q, d_v), dtype=torch.float32, device=q.device)
        lse = torch.empty((num_splits, b, h_q, n_q), dtype=torch.float32, device=q.device)
    else:
        out = torch.empty((1, b, h_q, n_q, d_v), dtype=q.dtype, device=q.device)
        lse = torch.empty((1, b, h_q, n_q), dtype=torch.float32, device=q.device)
    mask, bias = _strided(p.mask, q, 4), _strided(p.bias, q, 4)
    slopes = _strided(None if p.slopes is None else p.slopes.reshape(b, h_q), q, 2)
    window = p.window or (-1, -1)
    grid = (triton.cdiv(rows, cfg.block_m), b * heads, num_splits)
    if rows and b * heads:
        attention_fwd[grid](
            q,
            p.k,
            p.v,
            out,
            lse,
            mask[0],
            bias[0],
            slopes[0],
            _or(lens.q, q),
            _or(lens.kv, q),
            *q.stride(),
            *p.k.stride(),
            *p.v.stride(),
            *out.stride(),
            *lse.stride(),
            *mask[1],
            *bias[1],
            *slopes[1],
            heads,
            n_q,
            n_k,
            d_qk,
            d_v,
            group,
            split_len,
            p.scale,
            p.softcap or 1.0,
            window[0],
            window[1],
            BLOCK_D=_pow2(d_qk),
            BLOCK_DV=_pow2(d_v),
            EVEN_D=_even(d_qk, d_v),
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            CAUSAL=CAUSAL_CODES[p.causal],
            WINDOW=p.window is not None,
            HAS_MASK=p.mask is not None,
            HAS_BIAS=p.bias is not None,
            HAS_ALIBI=p.slopes is not None,
            HAS_SOFTCAP=p.softcap is not None,
            HAS_Q_LENS=lens.q is not None,
            HAS_KV_LENS=lens.kv is not None,
            PACK_GQA=pack_gqa,
            REVERSE=p.causal is not None,
            PRECISION=configs.precision(q),
            ALIGNED=_aligned(q, p.k, p.v, out),
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    if num_splits == 1:
        return out[0], lse[0]
    return merge(out, lse, q.dtype)


def merge(outs: torch.Tensor, lses: torch.Tensor, dtype: torch.dtype):
    """Clause ``flash.merge`` over ``S`` partials ``(S, B, H, N, D_v)`` and ``(S, B, H, N)``."""
    s, b, h, n, d_v = outs.shape
    out = torch.empty((b, h, n, d_v), dtype=dtype, device=outs.device)
    lse = torch.empty((b, h, n), dtype=torch.float32, device=outs.device)
    block_m = configs.INTERPRETER.block_m if configs.interpreted(outs) else 64
    if b * h * n:
        merge_partials[(triton.cdiv(n, block_m), b * h)](
            outs,
            lses,
            out,
            lse,
            s,
            h,
            n,
            d_v,
            *outs.stride(),
            *lses.stride(),
            *out.stride(),
            *lse.stride(),
            BLOCK_M=block_m,
            BLOCK_DV=_pow2(d_v),
        )
    return out, lse


def _strided(x: torch.Tensor | None, like: torch.Tensor, ndim: int):
    """``(tensor, strides)`` for an optional operand; ``like`` and zero strides if absent (never read)."""
    return (like, (0,) * ndim) if x is None else (x, x.stride())


def _aligned(*tensors: torch.Tensor) -> bool:
    """Whether every stride but the last of every tensor is a multiple of 16 elements (the kernels'
    ``ALIGNED``: their strides are not specialised on value, see ``attention.GENERIC``)."""
    return all(stride % 16 == 0 for x in tensors for stride in x.stride()[:-1])


def _or(x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like if x is None else x


def _even(d_qk: int, d_v: int) -> bool:
    return d_qk == _pow2(d_qk) and d_v == _pow2(d_v)


def _pow2(d: int) -> int:
    """The power-of-two tile width for a head dim (at least 16, the tensor cores' K step)."""
    return max(16, 1 << math.ceil(math.log2(max(d, 1))))


def block_sparse(p: Problem, layout, block_q: int, block_k: int):
    """Clause ``sparse.block_sparse``: ``(out, lse)`` over the active blocks of ``layout`` ``(H_l, R, C)`` (host)."""
    b, h_kv, group, n_q, d_qk = p.q.shape
    n_k, d_v, h_q = p.k.shape[2], p.v.shape[3], h_kv * group
    q = p.q.reshape(b, h_q, n_q, d_qk)
    active = torch.as_tensor(layout, dtype=torch.bool)
    counts = active.sum(-1).to(torch.int32).to(q.device)
    # Active key blocks first, in ascending order: a stable sort of "inactive" puts them there.
    indices = torch.sort((~active).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32).to(q.device)
    if configs.interpreted(q):
        block_m, block_n, warps, stages = _pow2(block_q), _pow2(block_k), 1, 1
    else:
        block_m, block_n = min(128, _pow2(block_q)), min(64 if max(d_qk, d_v) > 64 else 128, _pow2(block_k))
        warps, stages = (8 if block_m * max(d_qk, d_v, block_n) >= 128 * 128 else 4), 2
    block_m, block_n = min(block_m, 128), min(block_n, 128)
    pieces_m = triton.cdiv(block_q, block_m)
    out = torch.empty((b, h_q, n_q, d_v), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h_q, n_q), dtype=torch.float32, device=q.device)
    if n_q and b * h_q:
        block_sparse_fwd[(layout.shape[1] * pieces_m, b * h_q)](
            q,
            p.k,
            p.v,
            out,
            lse,
            counts,
            indices,
            *q.stride(),
            *p.k.stride(),
            *p.v.stride(),
            *out.stride(),
            *lse.stride(),
            *counts.stride(),
            *indices.stride(),
            h_q,
            n_q,
            n_k,
            d_qk,
            d_v,
            group,
            block_q,
            block_k,
            pieces_m,
            p.scale,
            BLOCK_D=_pow2(d_qk),
            BLOCK_DV=_pow2(d_v),
            EVEN_D=_even(d_qk, d_v),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            PER_HEAD=layout.shape[0] > 1,
            PRECISION=configs.precision(q),
            ALIGNED=_aligned(q, p.k, p.v, out),
            num_warps=warps,
            num_stages=stages,
        )
    return out, lse


def tma_eligible(p: Problem, lens: Lens) -> bool:
    """Whether :mod:`.attention_tma` covers the call: plain or causal attention, nothing else."""
    d_qk, d_v = p.q.shape[-1], p.v.shape[-1]
    plain = p.mask is None and p.bias is None and p.slopes is None and p.softcap is None and p.window is None
    return (
        plain
        and lens.q is None
        and lens.kv is None
        and p.scale > 0
        and p.q.dtype in (torch.float16, torch.bfloat16)
        and d_qk == _pow2(d_qk)  # (at least 16: a descriptor's rows are 16 bytes or more)
        and d_v == _pow2(d_v)
        and d_qk <= 128
        and d_v <= 128
        and all(x.is_contiguous() for x in (p.q, p.k, p.v))
    )


def attention_tma(p: Problem, cfg: configs.Config):
    """``(out, lse)`` through the TMA kernel (only where :func:`tma_eligible`)."""
    b, h_kv, group, n_q, d_qk = p.q.shape
    n_k, d_v, h_q = p.k.shape[2], p.v.shape[3], h_kv * group
    _descriptor_scratch()
    out = torch.empty((b, h_q, n_q, d_v), dtype=p.q.dtype, device=p.q.device)
    lse = torch.empty((b, h_q, n_q), dtype=torch.float32, device=p.q.device)
    if n_q and b * h_q:
        attention_fwd_tma[(triton.cdiv(n_q, cfg.block_m), b * h_q)](
            p.q,
            p.k,
            p.v,
            out,
            lse,
            b,
            h_q,
            group,
            n_q,
            n_k,
            p.scale,
            HEAD_DIM=d_qk,
            HEAD_DIM_V=d_v,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            CAUSAL=CAUSAL_CODES[p.causal],
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return out, lse


@functools.cache
def _descriptor_scratch() -> None:
    """Device-side tensor descriptors need global scratch memory, taken from PyTorch's allocator (set once)."""
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
