"""The forward kernel's fast path on Hopper: TMA tensor descriptors.

Taken only for plain attention (causal or not, no mask, bias, softcap, ALiBi, window or lengths),
16-bit inputs, head dims that fill their tile, a positive scale and contiguous ``(B, H, N, D)``
arrays; :mod:`.attention` covers everything else. It is a candidate of the tuning sweep
(``benchmarks/tune_triton.py``) and is taken by default where the H100 sweep showed it winning
(:func:`.configs.choose_tma`: head dim 128, and head dim 64 from 4k tokens). The differences from
:mod:`.attention`:

- Q, K and V tiles come through device-side tensor descriptors (``tl.make_tensor_descriptor``,
  the copy engine, three-dimensional ``(B * H, N, D)`` so that a tile never crosses into the next
  head: rows past ``N`` are zero-filled on load and clipped on store);
- the row maximum is taken on the raw products and scaled once, so that scale and subtraction
  are one multiply-add per score (valid because the scale is positive).

Warp specialisation (``tl.range(warp_specialize=True)``) is not used: Triton 3.6's Hopper pass fails
on this kernel (``NVGPUWarpSpecialization``; ``scripts/triton_compile_check.py`` showed it).
The visibility of the last key block (``j < N_k``) and of the causal diagonal band is the same
rule as in :mod:`.attention`, written for this kernel's two loops.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .attention import LOG2E, finish


@triton.jit
def _fast_block(
    acc,
    l_i,
    m_i,
    q,
    desc_k,
    desc_v,
    bh_kv,
    start_n,
    i,
    n_k,
    causal_offset,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    k = desc_k.load([bh_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    v = desc_v.load([bh_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM_V)
    qk = tl.dot(q, k.T)
    if MASKED:
        j = start_n + tl.arange(0, BLOCK_N)
        visible = (j[None, :] < n_k) & (i[:, None] >= 0)
        if CAUSAL:
            visible &= j[None, :] <= i[:, None] + causal_offset
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=("batch", "n_heads", "group", "n_q", "n_k"))  # one compile for every length
def attention_fwd_tma(
    Q,
    K,
    V,
    O,
    LSE,
    batch,
    n_heads,
    group,
    n_q,
    n_k,
    scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """Grid ``(row blocks, B * H_q)``; ``CAUSAL``: 0 none, 1 top-left, 2 bottom-right (longest rows first)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    bh = tl.program_id(1)
    bh_kv = (bh // n_heads) * (n_heads // group) + (bh % n_heads) // group
    desc_q = tl.make_tensor_descriptor(
        Q,
        shape=[batch * n_heads, n_q, HEAD_DIM],
        strides=[n_q * HEAD_DIM, HEAD_DIM, 1],
        block_shape=[1, BLOCK_M, HEAD_DIM],
    )
    desc_o = tl.make_tensor_descriptor(
        O,
        shape=[batch * n_heads, n_q, HEAD_DIM_V],
        strides=[n_q * HEAD_DIM_V, HEAD_DIM_V, 1],
        block_shape=[1, BLOCK_M, HEAD_DIM_V],
    )
    kv_heads = batch * (n_heads // group)
    desc_k = tl.make_tensor_descriptor(
        K, shape=[kv_heads, n_k, HEAD_DIM], strides=[n_k * HEAD_DIM, HEAD_DIM, 1], block_shape=[1, BLOCK_N, HEAD_DIM]
    )
    desc_v = tl.make_tensor_descriptor(
        V,
        shape=[kv_heads, n_k, HEAD_DIM_V],
        strides=[n_k * HEAD_DIM_V, HEAD_DIM_V, 1],
        block_shape=[1, BLOCK_N, HEAD_DIM_V],
    )
    start_m = pid_m * BLOCK_M
    r = start_m + tl.arange(0, BLOCK_M)
    i = tl.where(r < n_q, r, -1)
    causal_offset = n_k - n_q if CAUSAL == 2 else 0
    q = desc_q.load([bh, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
    qk_scale = scale * LOG2E

    hi = n_k
    full_hi = n_k // BLOCK_N * BLOCK_N
    if CAUSAL:
        hi = tl.maximum(tl.minimum(hi, tl.minimum(start_m + BLOCK_M, n_q) + causal_offset), 0)
        full_hi = tl.maximum(tl.minimum(full_hi, (start_m + causal_offset + 1) // BLOCK_N * BLOCK_N), 0)
    full_hi = tl.minimum(full_hi, hi)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V], dtype=tl.float32)
    for stage in tl.static_range(2):  # unmasked blocks, then the masked band (static: one call site)
        start, stop = (0, full_hi) if stage == 0 else (full_hi, hi)
        for start_n in range(start, stop, BLOCK_N):
            acc, l_i, m_i = _fast_block(
                acc,
                l_i,
                m_i,
                q,
                desc_k,
                desc_v,
                bh_kv,
                start_n,
                i,
                n_k,
                causal_offset,
                qk_scale,
                BLOCK_N,
                HEAD_DIM,
                HEAD_DIM_V,
                stage == 1,
                CAUSAL,
            )

    out, lse = finish(acc, l_i, m_i, i >= 0)
    desc_o.store([bh, start_m, 0], out.to(O.dtype.element_ty).reshape(1, BLOCK_M, HEAD_DIM_V))
    tl.store(LSE + bh * n_q + r, lse, mask=r < n_q)
