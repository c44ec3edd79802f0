"""The FlashAttention-2 backward kernels (Dao, 2023, Algorithm 2), three launches:

1. :func:`row_dot` ``D = rowsum(dout * out)`` per query row (``out`` from the forward kernel).
2. :func:`dkdv_bwd`, one program per key block of one KV head: ``K`` and ``V`` of the block stay in
   registers while the program walks the query heads of its group and the query blocks that can
   see the block, recomputing ``P = exp2(S log2(e) - lse log2(e))`` from the forward's natural-log
   LSE and accumulating ``dV += P^T dout`` and ``dK += dR^T q`` in float32. The GQA sum happens
   inside the program: no repeated K/V, no atomics.
3. :func:`dq_bwd`, one program per query block of one query head, walking its key blocks as the
   forward does: ``dQ += dR K`` (and ``dbias = dS`` written per tile when a bias is given).

Both walks use the forward's visibility code (:func:`.attention.visible`, :func:`.attention.log2_scores`)
and skip blocks the same way: the keys' walk uses :func:`.attention.key_range`, the rows' walk its
dual :func:`row_range`; only edge blocks build a mask. The key programs work on transposed tiles
(keys x queries), so that ``dV`` and ``dK`` are products of ``P^T`` and ``dS^T`` with row tiles
loaded as they lie.

A row without a visible key has LSE ``-inf``; it is read as ``+inf``, so that its ``P`` is
``exp2(-inf) = 0`` everywhere and it contributes nothing (never ``inf * 0``). Rows past ``q_lens``
and keys past ``kv_len`` are never loaded (masked loads give 0), so NaN stored there cannot reach a
gradient. 16-bit ``P`` and ``dS`` are rounded to the input dtype before their tensor-core
products, as FlashAttention-2 does; float32 products are IEEE.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .attention import LOG2E, _dot, aligned, key_range, log2_scores, visible

#: As :data:`.attention.GENERIC`: lengths and every stride but the last dimension's stay unspecialised.
GENERIC = (
    *("stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh"),
    *("stride_vn", "stride_ob", "stride_oh", "stride_om", "stride_mb", "stride_mh", "stride_mm", "stride_bb"),
    *("stride_bh", "stride_bm", "stride_sb", "stride_sh", "stride_ab", "stride_ah", "stride_am", "n_heads"),
    *("n_q", "n_k", "group", "win_left", "win_right"),
)


@triton.jit(do_not_specialize=("stride_ob", "stride_oh", "stride_om", "n_heads", "n_q"))
def row_dot(
    O,
    DO,
    DELTA,
    Q_LENS,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    n_heads,
    n_q,
    d_v,
    BLOCK_M: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    HAS_Q_LENS: tl.constexpr,
):
    """``DELTA[b, h, i] = sum_d out * dout`` in float32; 0 past ``q_lens`` (``dout`` is not read there).
    ``O`` and ``DO`` share strides (the launcher makes ``dout`` contiguous like ``out``)."""
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    i = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_DV)
    q_len = tl.minimum(tl.load(Q_LENS + b).to(tl.int32), n_q) if HAS_Q_LENS else n_q
    at = b * stride_ob + h * stride_oh + i[:, None] * stride_om + d[None, :] * stride_od
    ok = (i[:, None] < q_len) & (d[None, :] < d_v)
    out = tl.load(O + at, mask=ok, other=0.0).to(tl.float32)
    dout = tl.load(DO + at, mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + (b * n_heads + h) * n_q + i, tl.sum(out * dout, 1), mask=i < n_q)


@triton.jit
def row_range(
    j_first,
    j_last,
    q_len,
    keys_whole,
    offset,
    causal_offset,
    win_left,
    win_right,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``(lo, full_lo, full_hi, hi)``: the query rows that see some key of ``j_first..j_last``, and the
    whole row blocks in it of which each row sees every one of those keys (the dual of
    :func:`.attention.key_range`; ``keys_whole``: the key block holds no key past the length).

    Pair ``(i, j)`` is visible iff ``j <= i + causal_offset`` (causal), ``i + offset - win_left <= j``
    and ``j <= i + offset + win_right`` (window): bounds on ``i`` for each key. Every bound is
    clamped at 0 before it is divided, where the interpreter's floor and the GPU's truncation agree.
    """
    lo = 0
    hi = tl.where(j_last >= j_first, q_len, 0)
    full_lo = 0
    full_hi = q_len // BLOCK_M * BLOCK_M
    if CAUSAL:
        lo = tl.maximum(lo, j_first - causal_offset)
        full_lo = tl.maximum(full_lo, j_last - causal_offset)
    if WINDOW:
        if win_left >= 0:
            hi = tl.minimum(hi, j_last - offset + win_left + 1)
            full_hi = tl.minimum(full_hi, tl.maximum(j_first - offset + win_left + 1, 0) // BLOCK_M * BLOCK_M)
        if win_right >= 0:
            lo = tl.maximum(lo, j_first - offset - win_right)
            full_lo = tl.maximum(full_lo, j_last - offset - win_right)
    full_lo = tl.cdiv(full_lo, BLOCK_M) * BLOCK_M
    lo = lo // BLOCK_M * BLOCK_M
    hi = tl.maximum(hi, lo)
    full_lo = tl.where(keys_whole, full_lo, hi)  # keys past the length: every row block is masked
    if HAS_MASK:  # an arbitrary mask must be read in every block
        full_lo = hi
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _load_rows(X, i, row_ok, offs, width, stride_m, stride_d, TRANSPOSE: tl.constexpr, MASKED: tl.constexpr):
    """Rows ``i`` of ``X`` as a ``(rows, width)`` tile, or ``(width, rows)`` with ``TRANSPOSE``; 0
    outside ``row_ok`` where ``MASKED`` (a block inside the lengths is loaded without the row mask)."""
    if TRANSPOSE:  # one load at the end: the compiled path wants one return type
        at = i[None, :] * stride_m + offs[:, None] * stride_d
        ok = offs[:, None] < width
        if MASKED:
            ok &= row_ok[None, :]
    else:
        at = i[:, None] * stride_m + offs[None, :] * stride_d
        ok = offs[None, :] < width
        if MASKED:
            ok &= row_ok[:, None]
    return tl.load(X + at, mask=ok, other=0.0)


@triton.jit
def _row_stats(LSE, DELTA, i, row_ok):
    """``(lse * log2(e), D)`` of rows ``i``; a row without keys (or outside) gets ``+inf``: its ``P`` is 0."""
    lse = tl.load(LSE + i, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    return lse * LOG2E, tl.load(DELTA + i, mask=row_ok, other=0.0)


@triton.jit
def _lengths(Q_LENS, KV_LENS, b, n_q, n_k, HAS_Q_LENS: tl.constexpr, HAS_KV_LENS: tl.constexpr):
    """``(q_len, kv_len)`` of batch item ``b``, as the forward reads them (trusted up to the arrays)."""
    q_len = tl.load(Q_LENS + b).to(tl.int32) if HAS_Q_LENS else n_q
    kv_len = tl.load(KV_LENS + b).to(tl.int32) if HAS_KV_LENS else n_k
    return tl.minimum(q_len, n_q), tl.minimum(kv_len, n_k)


@triton.jit
def _dkdv_block(
    dk,
    dv,
    k,
    v,
    start_m,
    Q,
    DO,
    LSE,
    DELTA,
    MASK,
    BIAS,
    b,
    h,
    j,
    key_ok,
    slope,
    q_len,
    offs_m,
    offs_d,
    offs_dv,
    stride_qm,
    stride_qd,
    stride_om,
    stride_od,
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_bb,
    stride_bh,
    stride_bm,
    stride_bn,
    offset,
    causal_offset,
    win_left,
    win_right,
    scale,
    softcap,
    d_qk,
    d_v,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One block of query rows ``start_m + offs_m`` of head ``h`` against the program's keys ``j``:
    ``dV += P^T dout`` and ``dK += dR^T q`` (unscaled), on (keys x rows) tiles."""
    i = start_m + offs_m
    row_ok = i < q_len
    qt = _load_rows(Q, i, row_ok, offs_d, d_qk, stride_qm, stride_qd, True, MASKED)
    do = _load_rows(DO, i, row_ok, offs_dv, d_v, stride_om, stride_od, False, MASKED)
    lse2, delta = _row_stats(LSE, DELTA, i, row_ok)
    pair_ok = key_ok[:, None] & row_ok[None, :]
    st, tt = log2_scores(
        _dot(k, qt, PRECISION),
        scale,
        softcap,
        b,
        h,
        i[None, :],
        j[:, None],
        pair_ok,
        BIAS,
        stride_bb,
        stride_bh,
        stride_bm,
        stride_bn,
        slope,
        offset,
        HAS_SOFTCAP,
        HAS_BIAS,
        HAS_ALIBI,
    )
    pt = tl.math.exp2(st - lse2[None, :])
    if MASKED:
        seen = visible(
            b,
            h,
            i[None, :],
            j[:, None],
            pair_ok,
            MASK,
            stride_mb,
            stride_mh,
            stride_mm,
            stride_mn,
            offset,
            causal_offset,
            win_left,
            win_right,
            CAUSAL,
            WINDOW,
            HAS_MASK,
        )
        pt = tl.where(seen, pt, 0.0)
    dv += _dot(pt.to(do.dtype), do, PRECISION)
    dst = pt * (_dot(v, tl.trans(do), PRECISION) - delta[None, :])
    if HAS_SOFTCAP:
        dst = dst * (1.0 - tt * tt)
    dk += _dot(dst.to(qt.dtype), tl.trans(qt), PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=GENERIC)
def dkdv_bwd(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
    MASK,
    BIAS,
    SLOPES,
    Q_LENS,
    KV_LENS,
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
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_bb,
    stride_bh,
    stride_bm,
    stride_bn,
    stride_sb,
    stride_sh,
    n_heads,
    n_q,
    n_k,
    d_qk,
    d_v,
    group,
    scale,
    softcap,
    win_left,
    win_right,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_Q_LENS: tl.constexpr,
    HAS_KV_LENS: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """Grid ``(key blocks, B * H_kv)``; ``n_heads`` is ``H_kv``. ``DK`` and ``DV`` are contiguous
    ``(B, H_kv, N_k, D)``; ``LSE`` and ``DELTA`` contiguous ``(B, H_q, N_q)`` float32. Every key of
    the block is stored, 0 where no visible query reaches it."""
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
    b = tl.program_id(1) // n_heads
    h_kv = tl.program_id(1) % n_heads
    q_len, kv_len = _lengths(Q_LENS, KV_LENS, b, n_q, n_k, HAS_Q_LENS, HAS_KV_LENS)
    offset = kv_len - q_len  # bottom-right alignment of causal, window and ALiBi
    causal_offset = offset if CAUSAL == 2 else 0
    j_first = tl.program_id(0) * BLOCK_N
    j = j_first + tl.arange(0, BLOCK_N)
    key_ok = j < kv_len
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    K += b * stride_kb + h_kv * stride_kh
    V += b * stride_vb + h_kv * stride_vh
    k = _load_rows(K, j, key_ok, offs_d, d_qk, stride_kn, stride_kd, False, True)
    v = _load_rows(V, j, key_ok, offs_dv, d_v, stride_vn, stride_vd, False, True)
    lo, full_lo, full_hi, hi = row_range(
        j_first,
        tl.minimum(j_first + BLOCK_N, kv_len) - 1,
        q_len,
        j_first + BLOCK_N <= kv_len,
        offset,
        causal_offset,
        win_left,
        win_right,
        CAUSAL,
        WINDOW,
        HAS_MASK,
        BLOCK_M,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for r in range(0, group):  # the query heads of this KV head: dK and dV sum over them here
        h = h_kv * group + r
        slope = tl.load(SLOPES + b * stride_sb + h * stride_sh).to(tl.float32) if HAS_ALIBI else 0.0
        rows = (b * n_heads * group + h) * n_q
        for stage in tl.static_range(3):  # as the forward's key walk: masked, whole, masked
            if stage == 0:
                start, stop = lo, full_lo  # masked: the causal diagonal, the window's near edge
            elif stage == 1:
                start, stop = full_lo, full_hi  # every pair visible: no mask is built
            else:
                start, stop = full_hi, hi  # masked: the window's far edge, the last rows, a partial key block
            for start_m in range(start, stop, BLOCK_M):
                dk, dv = _dkdv_block(
                    dk,
                    dv,
                    k,
                    v,
                    start_m,
                    Q + b * stride_qb + h * stride_qh,
                    DO + b * stride_ob + h * stride_oh,
                    LSE + rows,
                    DELTA + rows,
                    MASK,
                    BIAS,
                    b,
                    h,
                    j,
                    key_ok,
                    slope,
                    q_len,
                    offs_m,
                    offs_d,
                    offs_dv,
                    stride_qm,
                    stride_qd,
                    stride_om,
                    stride_od,
                    stride_mb,
                    stride_mh,
                    stride_mm,
                    stride_mn,
                    stride_bb,
                    stride_bh,
                    stride_bm,
                    stride_bn,
                    offset,
                    causal_offset,
                    win_left,
                    win_right,
                    scale,
                    softcap,
                    d_qk,
                    d_v,
                    stage != 1,
                    CAUSAL,
                    WINDOW,
                    HAS_MASK,
                    HAS_BIAS,
                    HAS_ALIBI,
                    HAS_SOFTCAP,
                    PRECISION,
                )
    keys = (b * n_heads + h_kv) * n_k + j
    tl.store(
        DK + keys[:, None] * d_qk + offs_d[None, :],
        (dk * scale).to(DK.dtype.element_ty),
        mask=(j[:, None] < n_k) & (offs_d[None, :] < d_qk),
    )
    tl.store(
        DV + keys[:, None] * d_v + offs_dv[None, :],
        dv.to(DV.dtype.element_ty),
        mask=(j[:, None] < n_k) & (offs_dv[None, :] < d_v),
    )


@triton.jit
def _dq_block(
    dq,
    q,
    do,
    lse2,
    delta,
    start_n,
    K,
    V,
    MASK,
    BIAS,
    DBIAS,
    b,
    h,
    i,
    row_ok,
    slope,
    kv_len,
    n_q,
    n_k,
    offs_n,
    offs_d,
    offs_dv,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_bb,
    stride_bh,
    stride_bm,
    stride_bn,
    stride_am,
    offset,
    causal_offset,
    win_left,
    win_right,
    scale,
    softcap,
    d_qk,
    d_v,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One key block ``start_n + offs_n`` against the program's rows ``i``: ``dQ += dR K`` (unscaled);
    with a bias, ``dS`` of the tile is stored at ``DBIAS`` (the row block's, float32)."""
    j = start_n + offs_n
    key_ok = j < kv_len
    kt = _load_rows(K, j, key_ok, offs_d, d_qk, stride_kn, stride_kd, True, MASKED)
    vt = _load_rows(V, j, key_ok, offs_dv, d_v, stride_vn, stride_vd, True, MASKED)
    pair_ok = row_ok[:, None] & key_ok[None, :]
    s, t = log2_scores(
        _dot(q, kt, PRECISION),
        scale,
        softcap,
        b,
        h,
        i[:, None],
        j[None, :],
        pair_ok,
        BIAS,
        stride_bb,
        stride_bh,
        stride_bm,
        stride_bn,
        slope,
        offset,
        HAS_SOFTCAP,
        HAS_BIAS,
        HAS_ALIBI,
    )
    p = tl.math.exp2(s - lse2[:, None])
    if MASKED:
        seen = visible(
            b,
            h,
            i[:, None],
            j[None, :],
            pair_ok,
            MASK,
            stride_mb,
            stride_mh,
            stride_mm,
            stride_mn,
            offset,
            causal_offset,
            win_left,
            win_right,
            CAUSAL,
            WINDOW,
            HAS_MASK,
        )
        p = tl.where(seen, p, 0.0)
    ds = p * (_dot(do, vt, PRECISION) - delta[:, None])
    if HAS_BIAS:  # dbias = dS, before the softcap's derivative (the bias is added after the cap)
        tl.store(DBIAS + i[:, None] * stride_am + j[None, :], ds, mask=(i[:, None] < n_q) & (j[None, :] < n_k))
    if HAS_SOFTCAP:
        ds = ds * (1.0 - t * t)
    return dq + _dot(ds.to(q.dtype), tl.trans(kt), PRECISION)


@triton.jit(do_not_specialize=GENERIC)
def dq_bwd(
    Q,
    K,
    V,
    DO,
    DQ,
    DBIAS,
    LSE,
    DELTA,
    MASK,
    BIAS,
    SLOPES,
    Q_LENS,
    KV_LENS,
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
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_bb,
    stride_bh,
    stride_bm,
    stride_bn,
    stride_sb,
    stride_sh,
    stride_ab,
    stride_ah,
    stride_am,
    n_heads,
    n_q,
    n_k,
    d_qk,
    d_v,
    group,
    scale,
    softcap,
    win_left,
    win_right,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_Q_LENS: tl.constexpr,
    HAS_KV_LENS: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """Grid ``(row blocks, B * H_q)``; ``n_heads`` is ``H_q``. ``DQ`` is contiguous ``(B, H_q, N_q, D_qk)``;
    ``DBIAS`` a zeroed float32 ``(B, H_q, N_q, N_k)`` (with a bias; its last stride 1). The key blocks
    are the forward's (:func:`.attention.key_range`), so a row without a visible key gets ``dQ = 0``."""
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
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    h_kv = h // group
    q_len, kv_len = _lengths(Q_LENS, KV_LENS, b, n_q, n_k, HAS_Q_LENS, HAS_KV_LENS)
    offset = kv_len - q_len
    causal_offset = offset if CAUSAL == 2 else 0
    # Causal: the last row blocks, which see the most keys, first (the forward's REVERSE), for a short last wave.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    i_first = pid_m * BLOCK_M
    i = i_first + tl.arange(0, BLOCK_M)
    row_ok = i < q_len
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, i, row_ok, offs_d, d_qk, stride_qm, stride_qd, False, True)
    do = _load_rows(DO + b * stride_ob + h * stride_oh, i, row_ok, offs_dv, d_v, stride_om, stride_od, False, True)
    rows = (b * n_heads + h) * n_q
    lse2, delta = _row_stats(LSE + rows, DELTA + rows, i, row_ok)
    slope = tl.load(SLOPES + b * stride_sb + h * stride_sh).to(tl.float32) if HAS_ALIBI else 0.0
    i_last = tl.where(i_first < q_len, tl.minimum(i_first + BLOCK_M, q_len) - 1, -1)  # -1: no row, no key
    lo, full_lo, full_hi, hi = key_range(
        i_first, i_last, 0, kv_len, offset, causal_offset, win_left, win_right, CAUSAL, WINDOW, HAS_MASK, BLOCK_N
    )
    K += b * stride_kb + h_kv * stride_kh
    V += b * stride_vb + h_kv * stride_vh
    DBIAS += b * stride_ab + h * stride_ah
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for stage in tl.static_range(3):
        if stage == 0:
            start, stop = lo, full_lo  # masked: the window's left edge
        elif stage == 1:
            start, stop = full_lo, full_hi  # every pair visible: no mask is built
        else:
            start, stop = full_hi, hi  # masked: the causal diagonal, the window's right edge, the last key
        for start_n in range(start, stop, BLOCK_N):
            dq = _dq_block(
                dq,
                q,
                do,
                lse2,
                delta,
                start_n,
                K,
                V,
                MASK,
                BIAS,
                DBIAS,
                b,
                h,
                i,
                row_ok,
                slope,
                kv_len,
                n_q,
                n_k,
                offs_n,
                offs_d,
                offs_dv,
                stride_kn,
                stride_kd,
                stride_vn,
                stride_vd,
                stride_mb,
                stride_mh,
                stride_mm,
                stride_mn,
                stride_bb,
                stride_bh,
                stride_bm,
                stride_bn,
                stride_am,
                offset,
                causal_offset,
                win_left,
                win_right,
                scale,
                softcap,
                d_qk,
                d_v,
                stage != 1,
                CAUSAL,
                WINDOW,
                HAS_MASK,
                HAS_BIAS,
                HAS_ALIBI,
                HAS_SOFTCAP,
                PRECISION,
            )
    tl.store(
        DQ + (rows + i[:, None]) * d_qk + offs_d[None, :],
        (dq * scale).to(DQ.dtype.element_ty),
        mask=(i[:, None] < n_q) & (offs_d[None, :] < d_qk),
    )
