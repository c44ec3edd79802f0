"""Compiling (once per instantiation, cached by CuPy on disk) and launching the CUDA kernels."""

from __future__ import annotations

import functools

import cupy as cp
import numpy as np

from . import kernels
from .problem import Problem, aligned, dtype_name, strides

CAUSAL_CODES = {None: 0, "top_left": 1, "bottom_right": 2}
_NULL = np.uint64(0)  # a null pointer argument (an option the call does not have)


@functools.cache
def function(inst: kernels.Instance) -> cp.RawKernel:
    """The compiled kernel of ``inst`` for this GPU (CuPy picks the architecture and caches the
    binary on disk, keyed by source, options and name)."""
    code, options = kernels.program(inst)
    module = cp.RawModule(code=code, options=options, name_expressions=[inst.name])
    kernel = module.get_function(inst.name)
    if inst.shared_bytes > 48 * 1024:  # above the default limit, dynamic shared memory is opted into
        kernel.max_dynamic_shared_size_bytes = inst.shared_bytes
    return kernel


def attention(
    p: Problem,
    *,
    num_splits: int = 1,
    pack_gqa: bool = False,
    block: tuple[int, int] | None = None,
    cache_lens=None,
    wm: int | None = None,
):
    """``(out, lse)``: ``out`` ``(B, H_q, N_q, D_v)`` in the input dtype, ``lse`` float32.

    ``num_splits > 1`` runs split-KV (float32 partials merged by their LSE); ``pack_gqa`` puts the
    query heads of a KV head in one tile (decode); ``cache_lens`` (device int32) replaces ``kv_lens``;
    ``block`` and ``wm`` force a tile (``flash_forward``, the tuning sweep).
    """
    b, h_q, n_q, d_qk = p.q.shape
    h_kv, n_k, d_v = p.k.shape[1], p.k.shape[2], p.v.shape[3]
    group = h_q // h_kv
    rows, heads = (group * n_q, h_kv) if pack_gqa else (n_q, h_q)
    probe = kernels.attention(p.dtype, d_qk, d_v, rows=rows, general=p.general, partial=False, block=block, wm=wm)
    split_len, splits = kernels.split_length(n_k, num_splits, probe.block_n)
    inst = (
        probe
        if splits == 1
        else kernels.attention(p.dtype, d_qk, d_v, rows=rows, general=p.general, partial=True, block=block, wm=wm)
    )
    out_dtype = p.q.dtype if splits == 1 else cp.float32
    out = cp.empty((splits, b, h_q, n_q, d_v), dtype=out_dtype)
    lse = cp.empty((splits, b, h_q, n_q), dtype=cp.float32)
    kv_lens = p.kv_lens if cache_lens is None else cache_lens
    window = p.window or (-1, -1)
    grid = kernels.grid(inst, rows, b * heads, splits)
    if rows and b * heads:
        args = (
            p.q, p.k, p.v, out, lse,
            _or_null(p.q_lens), _or_null(kv_lens), _or_null(p.mask), _or_null(p.bias), _or_null(p.slopes),
            *strides(p.q)[:3], *strides(p.k)[:3], *strides(p.v)[:3], *strides(out)[:4], *strides(lse),
            *strides(p.mask, 4), *strides(p.bias, 4), *strides(p.slopes, 2),
            *_ints(heads, n_q, n_k, d_qk, d_v, group, split_len),
            np.float32(p.scale), np.float32(p.softcap or 0.0),
            *_ints(CAUSAL_CODES[p.causal], *window, pack_gqa, p.causal is not None, aligned(p.q, p.k, p.v)),
        )  # fmt: skip
        function(inst)(grid, (inst.threads,), args, shared_mem=inst.shared_bytes)
    if splits == 1:
        return out[0], lse[0]
    return merge(out, lse, p.q.dtype)


def merge(outs, lses, out_dtype):
    """``flash.merge`` of ``(S, B, H, N, D)`` partials and ``(S, B, H, N)`` float32 LSEs."""
    s, b, h, n, d = outs.shape
    width = max(d, 1)  # D = 0: one (zero) column, so that a thread per row still writes the LSE
    outs = cp.ascontiguousarray(outs) if d else cp.zeros((s, b, h, n, 1), outs.dtype)
    lses = cp.ascontiguousarray(lses, dtype=cp.float32)
    out = cp.empty((b, h, n, width), dtype=out_dtype)
    lse = cp.empty((b, h, n), dtype=cp.float32)
    rows = b * h * n
    if rows:
        inst = kernels.merge(dtype_name(outs.dtype), dtype_name(np.dtype(out_dtype)))
        blocks = (rows * width + inst.threads - 1) // inst.threads
        args = (outs, lses, out, lse, np.int32(s), np.int64(rows), np.int32(width))
        function(inst)((blocks,), (inst.threads,), args)
    return out[..., :d], lse


def _ints(*values) -> list[np.int32]:
    """The kernels' ``int`` arguments (CuPy passes NumPy scalars by value, in their own width)."""
    return [np.int32(int(x)) for x in values]


def _or_null(x):
    return _NULL if x is None else x
