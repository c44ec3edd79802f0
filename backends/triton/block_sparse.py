"""Clause ``sparse.block_sparse``: attention over a layout's active key blocks only.

The host turns the layout ``(H_l, R, C)`` into, per ``(head, query block)``, the count and the
list of its active key blocks; each program walks that list, so inactive blocks are never
loaded and the work follows the layout's nonzeros (clause ``sparse.cost``). Query row ``i`` is
position ``i + N_k - N_q``, and its block is ``position // block_q``. The layout's blocks need
not be tile-sized: a program covers ``BLOCK_M`` rows of one query block, and a key block is
visited in ``BLOCK_N``-wide pieces masked to the block's own keys. The online softmax step is
the dense kernel's (:func:`.attention._attend_block`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .attention import _attend_block, aligned, finish

#: Not specialised on their values (see :data:`.attention.GENERIC`): sizes, and the strides
#: :func:`.attention.aligned` restores the alignment of.
GENERIC = (
    *("stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh"),
    *("stride_vn", "stride_ob", "stride_oh", "stride_om", "stride_lb", "stride_lh", "stride_ch", "stride_cr"),
    *("stride_ih", "stride_ir", "n_heads", "n_q", "n_k", "group", "block_q", "block_k", "pieces_m"),
)


@triton.jit(do_not_specialize=GENERIC)
def block_sparse_fwd(
    Q,
    K,
    V,
    O,
    LSE,
    COUNTS,
    INDICES,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_lb,
    stride_lh,
    stride_lm,
    stride_ch,
    stride_cr,
    stride_ih,
    stride_ir,
    stride_ic,
    n_heads,
    n_q,
    n_k,
    d_qk,
    d_v,
    group,
    block_q,
    block_k,
    pieces_m,
    scale,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PER_HEAD: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """Grid ``(query blocks * pieces_m, B * H_q)``; ``PER_HEAD``: the layout has one row per query head."""
    if EVEN_D:
        d_qk = BLOCK_D
        d_v = BLOCK_DV
    stride_qb, stride_qh, stride_qm = (
        aligned(stride_qb, ALIGNED),
        aligned(stride_qh, ALIGNED),
        aligned(stride_qm, ALIGNED),
    )
    stride_kb, stride_kh, stride_kn = (
        aligned(stride_kb, ALIGNED),
        aligned(stride_kh, ALIGNED),
        aligned(stride_kn, ALIGNED),
    )
    stride_vb, stride_vh, stride_vn = (
        aligned(stride_vb, ALIGNED),
        aligned(stride_vh, ALIGNED),
        aligned(stride_vn, ALIGNED),
    )
    stride_ob, stride_oh, stride_om = (
        aligned(stride_ob, ALIGNED),
        aligned(stride_oh, ALIGNED),
        aligned(stride_om, ALIGNED),
    )
    qb = tl.program_id(0) // pieces_m
    piece = tl.program_id(0) % pieces_m
    b = tl.program_id(1) // n_heads
    head = tl.program_id(1) % n_heads
    offset = n_k - n_q
    first = qb * block_q + piece * BLOCK_M  # first position of this program's rows
    pos = first + tl.arange(0, BLOCK_M)
    i = pos - offset
    row_ok = (pos < tl.minimum(first - piece * BLOCK_M + block_q, n_k)) & (i >= 0)
    i = tl.where(row_ok, i, -1)
    h = tl.zeros([BLOCK_M], dtype=tl.int32) + head
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(
        Q + b * stride_qb + head * stride_qh + i[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & (offs_d[None, :] < d_qk),
        other=0.0,
    )
    K += b * stride_kb + (head // group) * stride_kh
    V += b * stride_vb + (head // group) * stride_vh
    layout_head = head if PER_HEAD else 0
    count = tl.load(COUNTS + layout_head * stride_ch + qb * stride_cr)
    INDICES += layout_head * stride_ih + qb * stride_ir

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for n in range(count):
        k_start = tl.load(INDICES + n * stride_ic) * block_k
        k_stop = tl.minimum(k_start + block_k, n_k)
        for start_n in range(k_start, k_stop, BLOCK_N):
            acc, l_i, m_i = _attend_block(
                acc,
                l_i,
                m_i,
                q,
                start_n,
                K,
                V,
                K,
                K,
                0.0,
                b,
                h,
                i,
                offs_n,
                offs_d,
                offs_dv,
                stride_kn,
                stride_kd,
                stride_vn,
                stride_vd,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                k_start,
                k_stop,
                offset,
                0,
                -1,
                -1,
                scale,
                1.0,
                d_qk,
                d_v,
                True,
                0,
                False,
                False,
                False,
                False,
                False,
                PRECISION,
            )

    out, lse = finish(acc, l_i, m_i, row_ok)
    O += b * stride_ob + head * stride_oh
    tl.store(
        O + i[:, None] * stride_om + offs_dv[None, :] * stride_od,
        out.to(O.dtype.element_ty),
        mask=row_ok[:, None] & (offs_dv[None, :] < d_v),
    )
    tl.store(LSE + b * stride_lb + head * stride_lh + i * stride_lm, lse, mask=row_ok)
