"""The fused attention forward kernel: one program per block of query rows of one KV head.

Everything of ``sdpa`` happens in registers between two tensor-core products per key block:
scale, softcap, bias and ALiBi on the scores; the visibility rules (``q_lens``/``kv_lens``,
causal top-left or bottom-right, the window, a boolean mask); the online softmax in base 2
with the scale folded into ``log2(e)``. The LSE is stored in natural log (clause ``sdpa.lse``).

A program's *rows* are ``(query head, query)`` pairs of one KV head: query ``i`` of head
``h = h_kv * group + r // N_q`` when query heads are packed (decode: the few queries of every
head in a group share one tile and one read of K/V), or the queries of one head otherwise.

Key blocks are visited in three ranges, worked out once per program from the rules:

    [lo, full_lo)        masked: the window's left edge
    [full_lo, full_hi)   every pair visible: no mask is built
    [full_hi, hi)        masked: the causal diagonal, the window's right edge, the last key

Blocks outside ``[lo, hi)`` are never loaded, so keys past ``kv_lens`` are never read. A third
grid axis splits the keys into contiguous ranges (flash-decoding); each split stores a float32
partial ``(out, lse)`` that :mod:`.merge` combines.

A row that sees no key keeps ``m = -inf`` and ``l = 0``: its exponentials are taken against 0
instead of ``-inf`` (no ``inf - inf``), and it is stored as 0 with LSE ``-inf`` (clause
``sdpa.fully_masked``); a finite stand-in for ``-inf`` would average V instead.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # constexpr: a kernel may read no other global
LN2 = tl.constexpr(0.6931471805599453)

#: Arguments Triton must not specialise on their values (by default it compiles a new kernel for
#: every integer that is 1 or a multiple of 16): the lengths, and every stride but the last
#: dimension's. One compiled kernel then serves every length and batch, where the conformance
#: suite's random shapes otherwise cost a compile each; :func:`aligned` keeps the alignment facts
#: that the specialisation gave the loads. The head dims stay specialised: a head dim that is a
#: multiple of 16 (80, 96) lets the masked loads along it stay vectors.
GENERIC = (
    *("stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh"),
    *("stride_vn", "stride_os", "stride_ob", "stride_oh", "stride_om", "stride_ls", "stride_lb", "stride_lh"),
    *("stride_mb", "stride_mh", "stride_mm", "stride_bb", "stride_bh", "stride_bm", "stride_sb", "stride_sh"),
    *("n_heads", "n_q", "n_k", "group", "split_len", "win_left", "win_right"),
)


@triton.jit
def aligned(stride, ALIGNED: tl.constexpr):
    """``stride`` as the compiler should see it: where the host found every row, head and batch
    stride of Q, K, V and O a multiple of 16 elements (``ALIGNED``), ``stride // 16 * 16`` (equal to
    it) proves that to the compiler, so tile loads stay 16-byte vectors without a compile per value."""
    return stride // 16 * 16 if ALIGNED else stride


@triton.jit
def _tanh(x):
    """tanh to float32 accuracy from ``exp`` alone (the interpreter has no libdevice).

    Near 0 an odd Taylor series (error below 1e-8 relative for ``|x| < 0.5``); elsewhere
    ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|) <= 0.37``, which has no cancellation there.
    """
    x2 = x * x
    series = x * (
        1.0
        + x2
        * (
            -1.0 / 3
            + x2
            * (
                2.0 / 15
                + x2
                * (
                    -17.0 / 315
                    + x2
                    * (62.0 / 2835 + x2 * (-1382.0 / 155925 + x2 * (21844.0 / 6081075 + x2 * (-929569.0 / 638512875))))
                )
            )
        )
    )
    e = tl.exp(-2.0 * tl.abs(x))
    far = (1.0 - e) / (1.0 + e)
    return tl.where(tl.abs(x) < 0.5, series, tl.where(x < 0, -far, far))


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """``a @ b`` accumulated in float32. ``PRECISION == "bf16-emulated"``: bfloat16 operands multiplied
    as float32, which is exact for their products (Triton 3.6's interpreter multiplies bfloat16's raw
    bits instead; the compiled kernel never takes this branch)."""
    if PRECISION == "bf16-emulated":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def log2_scores(
    qk,
    scale,
    softcap,
    b,
    hh,
    ii,
    jj,
    pair_ok,
    BIAS,
    stride_bb,
    stride_bh,
    stride_bm,
    stride_bn,
    slope,
    offset,
    HAS_SOFTCAP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
):
    """``(S * log2(e), tanh(R / c))``: the final scores of products ``qk`` in base 2, and the softcap's
    tanh (``qk`` where there is no softcap) for the backward's derivative ``1 - tanh^2``.

    ``hh``, ``ii``, ``jj`` (head, query, key) and ``slope`` broadcast to the tile: ``[:, None]`` and
    ``[None, :]`` give the forward's (queries, keys) tiles, the other way round the backward's
    (keys, queries) tiles, from this one definition of the scores."""
    t = qk
    if HAS_SOFTCAP or HAS_BIAS or HAS_ALIBI:  # modifiers act on scaled scores in natural units
        s = qk * scale
        if HAS_SOFTCAP:
            t = _tanh(s / softcap)
            s = softcap * t
        if HAS_BIAS:
            s += tl.load(
                BIAS + b * stride_bb + hh * stride_bh + ii * stride_bm + jj * stride_bn, mask=pair_ok, other=0.0
            ).to(tl.float32)
        if HAS_ALIBI:
            s -= slope * tl.abs(ii + offset - jj).to(tl.float32)
        s = s * LOG2E
    else:
        s = qk * (scale * LOG2E)
    return s, t


@triton.jit
def visible(
    b,
    hh,
    ii,
    jj,
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
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
):
    """Which pairs ``(ii, jj)`` of a tile are visible: ``pair_ok`` (inside the lengths) and causal,
    window and mask. The indices broadcast to the tile in either orientation (see :func:`log2_scores`)."""
    seen = pair_ok
    if CAUSAL:
        seen &= jj <= ii + causal_offset
    if WINDOW:
        if win_left >= 0:
            seen &= jj >= ii + offset - win_left
        if win_right >= 0:
            seen &= jj <= ii + offset + win_right
    if HAS_MASK:
        seen &= (
            tl.load(MASK + b * stride_mb + hh * stride_mh + ii * stride_mm + jj * stride_mn, mask=pair_ok, other=0) != 0
        )
    return seen


@triton.jit
def key_range(
    i_first,
    i_last,
    k_start,
    k_stop,
    offset,
    causal_offset,
    win_left,
    win_right,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """``(lo, full_lo, full_hi, hi)``: the keys of ``[k_start, k_stop)`` that queries ``i_first..i_last``
    may see, and the whole key blocks in it that each of them sees (no mask built there). No query
    (``i_last < 0``): an empty range."""
    lo = k_start
    hi = tl.where(i_last >= 0, k_stop, k_start)
    full_lo = k_start
    full_hi = k_stop // BLOCK_N * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(hi, i_last + causal_offset + 1)
        full_hi = tl.minimum(full_hi, (i_first + causal_offset + 1) // BLOCK_N * BLOCK_N)
    if WINDOW:
        if win_left >= 0:
            lo = tl.maximum(lo, i_first + offset - win_left)
            full_lo = tl.maximum(full_lo, tl.cdiv(i_last + offset - win_left, BLOCK_N) * BLOCK_N)
        if win_right >= 0:
            hi = tl.minimum(hi, i_last + offset + win_right + 1)
            full_hi = tl.minimum(full_hi, (i_first + offset + win_right + 1) // BLOCK_N * BLOCK_N)
    lo = lo // BLOCK_N * BLOCK_N
    hi = tl.maximum(hi, lo)
    if HAS_MASK:  # an arbitrary mask must be read in every block
        full_lo = hi
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _attend_block(
    acc,
    l_i,
    m_i,
    q,
    start_n,
    K,
    V,
    MASK,
    BIAS,
    slope,
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
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_bb,
    stride_bh,
    stride_bm,
    stride_bn,
    k_start,
    k_stop,
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
    """One online-softmax step over keys ``[start_n, start_n + BLOCK_N)``; returns the new state."""
    j = start_n + offs_n
    in_range = (j >= k_start) & (j < k_stop)
    pair_ok = (i[:, None] >= 0) & in_range[None, :]  # rows past the lengths have i = -1: read nothing for them
    if MASKED:  # keys outside the range are not read: NaN stored there must not reach the output
        kt = tl.load(
            K + j[None, :] * stride_kn + offs_d[:, None] * stride_kd,
            mask=in_range[None, :] & (offs_d[:, None] < d_qk),
            other=0.0,
        )
        v = tl.load(
            V + j[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
            mask=in_range[:, None] & (offs_dv[None, :] < d_v),
            other=0.0,
        )
    else:
        kt = tl.load(K + j[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=offs_d[:, None] < d_qk, other=0.0)
        v = tl.load(V + j[:, None] * stride_vn + offs_dv[None, :] * stride_vd, mask=offs_dv[None, :] < d_v, other=0.0)
    s, _ = log2_scores(
        _dot(q, kt, PRECISION),
        scale,
        softcap,
        b,
        h[:, None],
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
    if MASKED:
        seen = visible(
            b,
            h[:, None],
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
        s = tl.where(seen, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: exp2(-inf - 0) = 0
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
    return acc, l_i, m_new


@triton.jit
def finish(acc, l_i, m_i, row_ok):
    """``(out, lse)`` of the online softmax's state: ``acc / l`` and ``m + log(l)`` in natural log
    (``m`` is in base 2), or 0 and ``-inf`` for a row with no key (``l = 0``) or outside ``row_ok``."""
    has_key = row_ok & (l_i > 0)
    out = tl.where(has_key[:, None], acc / tl.where(has_key, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) * LN2, float("-inf"))
    return out, lse


@triton.jit(do_not_specialize=GENERIC)
def attention_fwd(
    Q,
    K,
    V,
    O,
    LSE,
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
    stride_os,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_ls,
    stride_lb,
    stride_lh,
    stride_lm,
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
    split_len,
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
    PACK_GQA: tl.constexpr,
    REVERSE: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """Grid ``(row blocks, B * heads, splits)``; ``heads`` is ``H_kv`` when packing, else ``H_q``.

    ``CAUSAL``: 0 none, 1 top-left, 2 bottom-right. ``REVERSE`` launches the longest causal row
    blocks first, so that the last wave is short. ``EVEN_D``: both head dims fill their tiles, so
    the head-dim bounds are compile-time constants and loads are unmasked along them; other head
    dims share one compiled kernel per tile width.
    """
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
    stride_os, stride_ob = aligned(stride_os, ALIGNED), aligned(stride_ob, ALIGNED)
    stride_oh, stride_om = aligned(stride_oh, ALIGNED), aligned(stride_om, ALIGNED)
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if REVERSE else tl.program_id(0)
    b = tl.program_id(1) // n_heads
    head = tl.program_id(1) % n_heads
    split = tl.program_id(2)
    q_len = tl.load(Q_LENS + b).to(tl.int32) if HAS_Q_LENS else n_q
    kv_len = tl.load(KV_LENS + b).to(tl.int32) if HAS_KV_LENS else n_k
    q_len = tl.minimum(q_len, n_q)  # lengths read on the device are trusted only up to the array
    kv_len = tl.minimum(kv_len, n_k)
    offset = kv_len - q_len  # bottom-right alignment of causal, window and ALiBi

    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if PACK_GQA:
        h = head * group + r // n_q
        i = r % n_q
        row_ok = r < group * n_q
    else:
        h = tl.zeros([BLOCK_M], dtype=tl.int32) + head
        i = r
        row_ok = r < n_q
    row_ok &= i < q_len
    i = tl.where(row_ok, i, -1)  # rows past the lengths see nothing (and are stored as 0 / -inf)
    h_kv = head if PACK_GQA else head // group
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    q = tl.load(
        Q + b * stride_qb + h[:, None] * stride_qh + i[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & (offs_d[None, :] < d_qk),
        other=0.0,
    )
    slope = 0.0  # a (rows, 1) column of ALiBi slopes, broadcast against the key axis
    if HAS_ALIBI:
        slope = tl.load(SLOPES + b * stride_sb + h * stride_sh, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    K += b * stride_kb + h_kv * stride_kh
    V += b * stride_vb + h_kv * stride_vh

    # The key range this block of rows may see, and the part of it where every pair is visible.
    i_first = tl.min(tl.where(row_ok, i, n_q))
    i_last = tl.max(i)
    causal_offset = offset if CAUSAL == 2 else 0
    k_start = split * split_len
    k_stop = tl.minimum(k_start + split_len, kv_len)
    lo, full_lo, full_hi, hi = key_range(
        i_first, i_last, k_start, k_stop, offset, causal_offset, win_left, win_right, CAUSAL, WINDOW, HAS_MASK, BLOCK_N
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # The three ranges of key blocks through one call site: static_range unrolls the stages, so
    # whether a stage masks is a compile-time constant in each copy of the loop.
    for stage in tl.static_range(3):
        if stage == 0:
            start, stop = lo, full_lo  # masked: the window's left edge
        elif stage == 1:
            start, stop = full_lo, full_hi  # every pair visible: no mask is built
        else:
            start, stop = full_hi, hi  # masked: the causal diagonal, the window's right edge, the last key
        for start_n in range(start, stop, BLOCK_N):
            acc, l_i, m_i = _attend_block(
                acc,
                l_i,
                m_i,
                q,
                start_n,
                K,
                V,
                MASK,
                BIAS,
                slope,
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
                stride_mb,
                stride_mh,
                stride_mm,
                stride_mn,
                stride_bb,
                stride_bh,
                stride_bm,
                stride_bn,
                k_start,
                k_stop,
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

    out, lse = finish(acc, l_i, m_i, row_ok)  # rows past q_lens went through the unmasked blocks too
    h_store = h if PACK_GQA else tl.zeros([BLOCK_M], dtype=tl.int32) + head
    i_store = r % n_q if PACK_GQA else r
    store_ok = (r < group * n_q) if PACK_GQA else (r < n_q)
    O += split * stride_os + b * stride_ob
    tl.store(
        O + h_store[:, None] * stride_oh + i_store[:, None] * stride_om + offs_dv[None, :] * stride_od,
        out.to(O.dtype.element_ty),
        mask=store_ok[:, None] & (offs_dv[None, :] < d_v),
    )
    tl.store(LSE + split * stride_ls + b * stride_lb + h_store * stride_lh + i_store * stride_lm, lse, mask=store_ok)
