"""Clause ``flash.merge``: partial results over disjoint key sets combined by their LSE, in one pass.

Each program merges a block of rows of one ``(batch, head)`` over the ``S`` partials with the
same running maximum as the attention kernel, in natural log: with ``m`` the largest LSE so far,
``out = sum_s exp(lse_s - m) * out_s / sum_s exp(lse_s - m)`` and ``lse = m + log(sum)``. A partial
with LSE ``-inf`` gets weight 0 and its output is not used at all (it may hold NaN); if every
partial is ``-inf`` the row is 0 with LSE ``-inf``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=("n_splits", "n_heads", "n_rows", "d_v"))  # one compile for every length
def merge_partials(
    OUTS,
    LSES,
    O,
    LSE,
    n_splits,
    n_heads,
    n_rows,
    d_v,
    stride_ps,
    stride_pb,
    stride_ph,
    stride_pm,
    stride_pd,
    stride_qs,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_lb,
    stride_lh,
    stride_lm,
    BLOCK_M: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Grid ``(row blocks, B * H)``."""
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_DV)
    row_ok = rows < n_rows
    tile_ok = row_ok[:, None] & (offs_d[None, :] < d_v)
    OUTS += b * stride_pb + h * stride_ph + rows[:, None] * stride_pm + offs_d[None, :] * stride_pd
    LSES += b * stride_qb + h * stride_qh + rows * stride_qm
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for s in range(n_splits):
        lse = tl.load(LSES + s * stride_qs, mask=row_ok, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, lse)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        weight = tl.exp(lse - m_use)
        alpha = tl.exp(m - m_use)
        part = tl.load(OUTS + s * stride_ps, mask=tile_ok & (weight[:, None] > 0), other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + weight[:, None] * part
        total = total * alpha + weight
        m = m_new
    has_key = total > 0
    out = tl.where(has_key[:, None], acc / tl.where(has_key, total, 1.0)[:, None], 0.0)
    lse = tl.where(has_key, m + tl.log(tl.where(has_key, total, 1.0)), float("-inf"))
    O += b * stride_ob + h * stride_oh
    tl.store(O + rows[:, None] * stride_om + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty), mask=tile_ok)
    tl.store(LSE + b * stride_lb + h * stride_lh + rows * stride_lm, lse, mask=row_ok)
