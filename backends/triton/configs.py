"""Tile shapes per problem: a small table, one entry per (head dim, dtype, kind of call).

On the GPU, BLOCK_M x BLOCK_N score tiles live in registers, K and V tiles in shared memory
``num_stages`` deep; the table keeps both within an H100's budget. Under the interpreter
(``TRITON_INTERPRET=1``, the CPU) tiles are 32 x 32: the conformance suite's sequences (up to
129) still cross several tiles, so the partial last tile, the diagonal band and the skipped blocks
are checked there, while the interpreter's cost per tile (NumPy calls, not FLOPs) stays bearable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    tma: bool = False  # the TMA fast path (attention_tma), where the call is eligible


INTERPRETER = Config(32, 32, 1, 1)


def interpreted(x: torch.Tensor) -> bool:
    """Kernels on CPU tensors run under Triton's interpreter (the backend sets it up for ``cpu``)."""
    return not x.is_cuda


def precision(x: torch.Tensor) -> str:
    """float32 products in IEEE float32 (the float32 clauses demand it: TF32 keeps 10 mantissa bits);
    16-bit products on tensor cores, except bfloat16 under the interpreter (see ``attention._dot``)."""
    if x.dtype == torch.float32:
        return "ieee"
    return "bf16-emulated" if x.dtype == torch.bfloat16 and interpreted(x) else "tf32"


def choose(q: torch.Tensor, d_qk: int, d_v: int, *, rows: int, n_k: int, tile=None) -> Config:
    """The tile for one call of the general kernel: ``tile`` (flash_forward's block sizes) if given,
    else the table's. Measured on an H100 (``docs/results/2026-12-07-triton-sweep-h100.md``): for
    16-bit inputs 128-row tiles with 8 warps beat 4 warps at every head dim (D = 80 and 96 run in
    128-wide tiles: 0.83-0.86x of SDPA against 0.45-0.48x with 4 warps)."""
    if interpreted(q):
        return Config(*tile) if tile else INTERPRETER
    return choose_gpu(q.dtype, d_qk, d_v, rows=rows, tile=tile)


def choose_gpu(dtype: torch.dtype, d_qk: int, d_v: int, *, rows: int, tile=None) -> Config:
    """:func:`choose` on the GPU, from the call's dtype and sizes alone."""
    d = max(d_qk, d_v)
    wide = dtype == torch.float32 or d > 128  # twice the bytes per element, or twice the width
    if tile:
        block_m, block_n = tile
    elif rows <= 64:  # decode and short prefills: few rows, many keys
        block_m, block_n = max(16, min(64, _pow2(rows))), 64 if wide else 128
    else:
        block_m, block_n = (64, 32) if wide else (128, 64)
    warps = 8 if block_m >= 128 and not wide else 4
    return Config(block_m, block_n, warps, 2 if wide else 3)


def choose_forward(dtype: torch.dtype, d_qk: int, d_v: int, *, rows: int, n: int, causal: bool, tma: bool) -> Config:
    """The launch configuration of a forward call on the GPU with the table's tiles: the TMA kernel's
    where the call is eligible for it (``tma``: ``launch.tma_eligible``) and it wins, else the
    general kernel's. The tuning sweep reads its choice per row from here too."""
    fast = choose_tma(max(d_qk, d_v), causal, n) if tma else None
    return fast or choose_gpu(dtype, d_qk, d_v, rows=rows)


def choose_tma(d: int, causal: bool, n: int) -> Config | None:
    """The TMA kernel's tile for a plain or causal 16-bit call (``launch.tma_eligible``), or None
    where the general kernel was faster. From the H100 sweep (same file as :func:`choose`): at
    D = 128 the TMA kernel with 128 x 128 tiles wins from N = 4k (0.80-0.96x of SDPA against
    0.71-0.86x) and is within 0.04 below; at D = 64 its 128 x 64 tiles win from N = 4k, causal
    from 8k (0.84-0.99x against 0.84-0.93x), and lose at 2k (0.75-0.85x against 0.83-0.88x)."""
    if d > 64:
        return Config(128, 128, 8, 3, tma=True)
    if n >= (8192 if causal else 4096):
        return Config(128, 64, 4, 3, tma=True)
    return None


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def choose_backward(q: torch.Tensor, d_qk: int, d_v: int) -> tuple[Config, Config]:
    """``(key pass, query pass)`` tiles of the backward: the key pass holds ``block_n`` keys and steps
    through ``block_m`` query rows at a time, the query pass the other way round."""
    if interpreted(q):
        return INTERPRETER, INTERPRETER
    return backward_gpu(q.dtype, d_qk, d_v)


def backward_gpu(dtype: torch.dtype, d_qk: int, d_v: int) -> tuple[Config, Config]:
    """:func:`choose_backward` on the GPU. The Triton tutorial's FlashAttention-2 split (128 keys
    against 32 rows a step, 128 rows against 32 keys), with warps and stages chosen so that sm_90's
    ``ptxas`` spills no registers (at most 16 bytes) in these kernels: the key pass keeps dK, dV, K
    and V in registers, so 8 warps and 2 stages. Not yet timed on a GPU (``benchmarks/targets.toml``
    has the rows). float32 or heads past 128 take halved tiles and 8 warps (spills of 96 bytes at most);
    float32 heads past 128 quarter tiles (spills of a few kB: the correctness tier only)."""
    d = max(d_qk, d_v)
    if dtype == torch.float32 and d > 128:
        return Config(16, 32, 4, 2), Config(32, 16, 4, 2)
    if dtype == torch.float32 or d > 128:
        return Config(16, 64, 8, 2), Config(64, 16, 8, 2)
    if d <= 64:
        return Config(32, 128, 8, 2), Config(128, 32, 4, 5)
    return Config(32, 128, 8, 2), Config(128, 32, 8, 3)
