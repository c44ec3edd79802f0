"""Positional encodings: absolute (sinusoidal, learned), rotary, ALiBi, T5 buckets, Shaw.

Positions are non-negative integers. Arrays of positions broadcast like NumPy arrays.
"""

from attnspec.clauses import clause, operations

operations(
    sinusoidal="sinusoidal(positions, dim, *, layout, base=10000.0) -> pe",
    learned="learned(table, positions) -> pe",
    rope="rope(x, positions, *, layout, rotary_dim=None, base=10000.0) -> x_rotated",
    alibi_slopes="alibi_slopes(num_heads) -> slopes",
    alibi_bias="alibi_bias(slopes, n_q, n_k, *, form) -> bias",
    t5_bucket="t5_bucket(relative_position, *, bidirectional, num_buckets, max_distance) -> buckets",
    t5_bias="t5_bias(table, q_positions, k_positions, *, bidirectional, num_buckets, max_distance) -> bias",
    shaw="shaw(q, k, v, *, rel_k, rel_v, max_relative, scale=None) -> out",
)


@clause("pe.sinusoidal.interleaved", op="sinusoidal")
def pe_sinusoidal_interleaved(positions, dim, base=10000.0):
    """Sinusoidal encoding, the paper's interleaved channel layout (Vaswani et al., 2017).

    For even ``dim`` and ``c = 0 .. dim/2 - 1``, with ``w_c = base ** (-2c / dim)``::

        pe[p, 2c]     = sin(p * w_c)
        pe[p, 2c + 1] = cos(p * w_c)

    Returns ``(len(positions), dim)``. ``dim`` MUST be even and positive. Requested with
    ``layout="interleaved"``.

    .. versionadded:: 0.1.0
    """


@clause("pe.sinusoidal.concat", op="sinusoidal")
def pe_sinusoidal_concat(positions, dim, base=10000.0):
    """Sinusoidal encoding, the concatenated ``[sin | cos]`` layout (HF Marian, x-transformers, Transformer-XL).

    With ``w_c`` as in ``pe.sinusoidal.interleaved``: ``pe[p, c] = sin(p * w_c)`` and
    ``pe[p, dim/2 + c] = cos(p * w_c)``. The two layouts hold the same values in a different
    channel order; a model trained with one is wrong with the other. Requested with
    ``layout="concat"``. tensor2tensor and fairseq concatenate too, but with other frequencies:
    ``pe.sinusoidal.t2t``.

    .. versionadded:: 0.1.0
    """


@clause("pe.sinusoidal.t2t", op="sinusoidal", since="0.2.0")
def pe_sinusoidal_t2t(positions, dim, base=10000.0):
    """Sinusoidal encoding with tensor2tensor's frequencies, ``[sin | cos]`` (tensor2tensor, fairseq).

    As ``pe.sinusoidal.concat`` with ``w_c = base ** (-c / (dim/2 - 1))`` for ``c = 0 .. dim/2 - 1``
    (tensor2tensor's ``get_timing_signal_1d``, fairseq's ``SinusoidalPositionalEmbedding`` and
    HF's ports of it: M2M100, FSMT, Speech2Text): the lowest frequency is ``1 / base`` exactly.
    At ``dim = 4``, position 1: ``[sin 1, sin 1e-4, cos 1, cos 1e-4]``, where
    ``pe.sinusoidal.concat`` gives ``[sin 1, sin 0.01, cos 1, cos 0.01]``. ``dim`` MUST be even
    and ``>= 4``: at ``dim = 2`` the exponent divides by zero (fairseq raises; tensor2tensor's
    ``max(dim/2 - 1, 1)`` is not followed). An odd ``dim`` is an error, as in the other layouts:
    fairseq and tensor2tensor give this encoding at ``dim - 1`` followed by a zero channel, which
    a caller can append. Requested with ``layout="t2t"``.

    .. versionadded:: 0.2.0
    """


@clause("pe.learned", op="learned")
def pe_learned(table, positions):
    """Learned absolute positions: ``pe[..., :] = table[positions[...], :]``.

    ``table`` is ``(max_positions, dim)``; every position MUST satisfy
    ``0 <= p < max_positions``; a position outside is an error, never a wrap-around or a clamp.

    .. versionadded:: 0.1.0
    """


@clause("rope.half_split", op="rope")
def rope_half_split(x, positions, rotary_dim=None, base=10000.0):
    """Rotary embedding, half-split layout (GPT-NeoX, HF Llama; ONNX ``interleaved=0``).

    ``x`` is ``(B, H, N, D)``; ``positions`` is ``(N,)`` or ``(B, N)``; ``r = rotary_dim``
    (default ``D``) is even and ``<= D``. With ``theta_c = base ** (-2c / r)`` for
    ``c = 0 .. r/2 - 1`` and ``a = p * theta_c``, channel ``c`` is paired with ``c + r/2``::

        y[c]       = x[c] * cos(a) - x[c + r/2] * sin(a)
        y[c + r/2] = x[c + r/2] * cos(a) + x[c] * sin(a)

    Channels ``r .. D-1`` pass through unchanged (partial rotary, ``rope.partial``). Position
    offsets (a KV cache, packed sequences) are expressed through ``positions``. Requested with
    ``layout="half_split"``.

    .. versionadded:: 0.1.0
    """


@clause("rope.interleaved", op="rope")
def rope_interleaved(x, positions, rotary_dim=None, base=10000.0):
    """Rotary embedding, interleaved layout (GPT-J, Meta's original Llama; ONNX ``interleaved=1``).

    As ``rope.half_split`` but channel ``2c`` is paired with ``2c + 1``::

        y[2c]     = x[2c] * cos(a) - x[2c + 1] * sin(a)
        y[2c + 1] = x[2c + 1] * cos(a) + x[2c] * sin(a)

    Requested with ``layout="interleaved"``.

    .. versionadded:: 0.1.0
    """


@clause("rope.partial", op="rope")
def rope_partial(x, positions, rotary_dim):
    """Partial rotary dimension: only the first ``rotary_dim`` channels rotate.

    The frequencies use ``rotary_dim`` in their exponent (``theta_c = base ** (-2c / rotary_dim)``),
    as GPT-NeoX and Phi do, and channels ``rotary_dim .. D-1`` are returned unchanged. With RoPE
    the score ``dot(rope(q, m), rope(k, n))`` depends on ``m`` and ``n`` only through ``m - n``.

    .. versionadded:: 0.1.0
    """


@clause("alibi.slopes", op="alibi_slopes")
def alibi_slopes(num_heads):
    """ALiBi slopes for any head count, by the paper's recipe (Press et al., 2022).

    For ``n`` a power of two: ``slope[h] = 2 ** (-8 (h + 1) / n)`` for ``h = 0 .. n-1``. Otherwise,
    with ``m`` the largest power of two below ``n``: the ``m`` slopes for ``m`` heads, followed by
    the slopes for ``2m`` heads at even indices (``0, 2, 4, ...``), the first ``n - m`` of them.
    A plain geometric series for non-powers of two is not conforming.

    .. versionadded:: 0.1.0
    """


@clause("alibi.bias", op="alibi_bias")
def alibi_bias(slopes, n_q, n_k, form="symmetric"):
    """ALiBi bias tables of shape ``(H, N_q, N_k)``, in two named forms.

    With ``offset = N_k - N_q`` (bottom-right alignment): ``form="symmetric"`` is
    ``-slope[h] * |i + offset - j|`` (flash-attn, and ``sdpa.alibi``); ``form="causal"`` is
    ``slope[h] * (j - i - offset)`` (the paper's causal form). They agree at every key
    ``j <= i + offset``, so under a bottom-right causal mask they give the same scores. The
    original fairseq code adds ``slope[h] * j``, which differs from the causal form by the
    per-row constant ``slope[h] * (i + offset)``: same output, different LSE.

    .. versionadded:: 0.1.0
    """


@clause("t5.bucket", op="t5_bucket")
def t5_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """T5 relative position buckets (Raffel et al., 2020; HF ``_relative_position_bucket``).

    ``relative_position = key - query``. If ``bidirectional``, half the buckets hold positive
    offsets: ``n = num_buckets // 2`` and ``bucket = n if rel > 0 else 0``, with ``rel = |rel|``;
    otherwise ``n = num_buckets``, ``rel = max(-rel, 0)`` and ``bucket = 0``. Then with
    ``exact = n // 2``: ``rel < exact`` adds ``rel``; else it adds
    ``min(exact + floor(log(rel / exact) / log(max_distance / exact) * (n - exact)), n - 1)``.
    Results are integers in ``[0, num_buckets)``. The log bin is evaluated in float32, in the
    order written, as trained T5 models compute it (HF ``T5Attention``, x-transformers, the
    original T5 code): ``r = float32(rel) / exact``, ``l = log(r)`` (the float32 nearest the real
    log), ``l / float32(log(max_distance / exact))``, times ``n - exact``, each step rounded to
    float32, then truncated toward zero. ``num_buckets // (2 if bidirectional else 1) // 2`` MUST
    be ``>= 1`` and ``max_distance`` larger than it, or the log is undefined.

    Note: neither precision always gives the real-number floor; the float32 result is the
    conforming one. Bidirectional, ``t5_bucket(8, num_buckets=18, max_distance=128)`` has the bin
    ``log 2 / log 32 * 5 = 1`` exactly: float32 gives bucket 14 (the real floor), float64 13;
    ``t5_bucket(18, num_buckets=34, max_distance=27)`` has ``log 2.25 / log 3.375 * 9 = 6``:
    float32 gives 30, float64 31 (the real floor). A float32 log that is not correctly rounded
    differs at a few more offsets: ``t5_bucket(-12, num_buckets=34, max_distance=27)`` is 10, and
    11 with PyTorch's CPU log (within one ulp).

    .. versionadded:: 0.1.0
    """


@clause("t5.bias", op="t5_bias")
def t5_bias(table, q_positions, k_positions, bidirectional=True, num_buckets=32, max_distance=128):
    """T5 relative bias: ``bias[h, i, j] = table[t5_bucket(k_positions[j] - q_positions[i]), h]``.

    ``table`` is ``(num_buckets, H)``, a learned parameter; the result is ``(H, N_q, N_k)`` and is
    added to the scores (``sdpa.bias``; T5 uses ``scale = 1``).

    .. versionadded:: 0.1.0
    """


@clause("shaw", op="shaw")
def shaw(q, k, v, rel_k, rel_v, max_relative, scale=None):
    """Relative position representations (Shaw et al., 2018).

    With ``r(i, j) = clip(j - i, -max_relative, max_relative) + max_relative`` indexing tables
    ``rel_k`` of shape ``(2 max_relative + 1, D_qk)`` and ``rel_v`` of shape
    ``(2 max_relative + 1, D_v)``::

        s[i, j] = scale * dot(q_i, k_j + rel_k[r(i, j)])
        out[i]  = sum_j softmax_j(s[i, :]) * (v_j + rel_v[r(i, j)])

    ``q``, ``k``, ``v`` as in ``sdpa`` with ``H_kv = H_q``; the default scale is
    ``1 / sqrt(D_qk)``. Positions are top-left aligned: query ``i`` and key ``j`` are absolute.

    .. versionadded:: 0.1.0
    """
