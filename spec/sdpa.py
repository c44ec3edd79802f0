"""Scaled dot-product attention: the core operation and its score modifiers.

Shapes throughout: ``q`` is ``(B, H_q, N_q, D_qk)``, ``k`` is ``(B, H_kv, N_k, D_qk)``, ``v`` is
``(B, H_kv, N_k, D_v)``; the output is ``(B, H_q, N_q, D_v)`` and the LSE ``(B, H_q, N_q)``.
Query ``i`` and key ``j`` are 0-based positions.

The visibility rules (causal, window, padding; last in this module) are predicates
``visible(b, h, i, j)``; the reference writes them as ``mask_mod`` index functions
(:mod:`attnspec.reference.masks`). Rules combine by intersection. The effective lengths of batch
item ``b`` are ``Nq(b) = q_lens[b]`` and ``Nk(b) = kv_lens[b]`` when lengths are given, else
``N_q`` and ``N_k``; ``offset(b) = Nk(b) - Nq(b)``.
"""

from __future__ import annotations

from typing import Literal

from attnspec.clauses import Array, clause, operation

# sdpa_options, in the signatures of the operations built on sdpa: scale, causal, window, mask,
# bias, softcap, alibi_slopes, q_lens, kv_lens. "-> (out, lse)" means both are returned.


@clause("sdpa", op="sdpa")
@operation
def sdpa(
    q: Array,
    k: Array,
    v: Array,
    *,
    scale: float | None = None,
    causal: Literal["top_left", "bottom_right"] | None = None,
    window: tuple[int, int] | None = None,
    window_align: Literal["bottom_right", "top_left"] | None = None,
    mask: Array | None = None,
    bias: Array | None = None,
    softcap: float | None = None,
    alibi_slopes: Array | None = None,
    q_lens: Array | None = None,
    kv_lens: Array | None = None,
    return_lse: bool = False,
) -> Array | tuple[Array, Array]:
    """Scaled dot-product attention.

    For every batch item ``b``, query head ``h`` and query ``i``, with ``g = kv_head(h)``
    (clause ``sdpa.gqa``), the score of key ``j`` is, in this order::

        s[j] = scale * dot(q[b, h, i, :], k[b, g, j, :])      # sdpa.scale
        s[j] = softcap * tanh(s[j] / softcap)                   # sdpa.softcap, if given
        s[j] = s[j] + bias[b, h, i, j] + alibi(b, h, i, j)      # sdpa.bias, sdpa.alibi, if given

    ``V(i)`` is the set of keys visible to query ``i``: the intersection of every visibility
    rule that applies (``causal``, ``window``, ``mask``, ``q_lens``/``kv_lens``). Then::

        lse[b, h, i] = log(sum over j in V(i) of exp(s[j]))    # natural log, sdpa.lse
        out[b, h, i, :] = sum over j in V(i) of exp(s[j] - lse[b, h, i]) * v[b, g, j, :]

    - ``D_v`` MAY differ from ``D_qk``; ``N_q`` MAY differ from ``N_k`` (cross-attention).
    - ``D_qk`` MUST be at least 1: with no query/key features there is no score, and the default
      scale ``1 / sqrt(D_qk)`` is undefined; ``D_qk = 0`` is an error naming the argument.
      ``D_v = 0`` is allowed: the output has no columns, and the LSE is as for any ``D_v``.
    - Keys outside ``V(i)`` MUST NOT influence the output: a finite value stored at an invisible
      key, however large (``1e4``), leaves the output unchanged. Positions past the sequence
      lengths (``sdpa.padding``, and a KV cache past ``cache_lens``) MUST NOT be read at all: NaN
      stored there leaves every output finite. A NaN (or infinity) at an in-range key hidden by
      any other rule (causal, window, mask, a sparse layout) SHOULD NOT reach the output. The
      levels differ on purpose: memory past a length is not the caller's data (a cache's unused
      capacity, another sequence of a packed batch) and a tiled kernel never needs to load it,
      while a hidden in-range key shares its tile with visible ones, and a tensor-core kernel
      multiplies a whole tile of probabilities by a whole tile of values, where ``0 * NaN`` is
      NaN: meeting it costs a scan of every value tile, and flash-attn, cuDNN and this project's
      tiled kernels do not pay it. The suite reports a SHOULD not met apart from the clause's
      verdict (``SHOULD not met`` in the report), never as a failure.
    - A row with ``V(i)`` empty follows ``sdpa.fully_masked``.
    - The result MUST NOT overflow for finite inputs whose scores are finite: an implementation
      subtracts the row maximum (or an equivalent running maximum) before exponentiating.
    - Accuracy is judged by the tolerance policy (:mod:`attnspec.tolerance`): at 16 and 32 bits
      against a naive implementation in the same precision, at 64 bits to a few ulps.

    Parameters
    ----------
    q, k, v
        ``(B, H_q, N_q, D_qk)``, ``(B, H_kv, N_k, D_qk)``, ``(B, H_kv, N_k, D_v)``, one floating dtype.
    scale
        The factor of the dot product; None is ``1 / sqrt(D_qk)`` (``sdpa.scale``).
    causal
        The causal rule, aligned top-left or bottom-right (``sdpa.causal.*``); a bool is an error.
    window
        ``(left, right)`` keys around the diagonal, ``-1`` unbounded (``sdpa.window``).
    window_align
        The corner the window is aligned to: ``"bottom_right"`` (None; ``sdpa.window``) or
        ``"top_left"`` (``sdpa.window.top_left``).
    mask
        Boolean, broadcastable to ``(B, H_q, N_q, N_k)``, True where a key may be attended to
        (``sdpa.mask``).
    bias
        Floating, broadcastable to ``(B, H_q, N_q, N_k)``, finite or ``-inf`` (``sdpa.bias``).
    softcap
        ``c > 0`` of ``c * tanh(s / c)`` (``sdpa.softcap``).
    alibi_slopes
        ``(H_q,)`` or ``(B, H_q)`` (``sdpa.alibi``).
    q_lens, kv_lens
        Integer ``(B,)``: the valid lengths of each batch item (``sdpa.padding``).
    return_lse
        Also return the log-sum-exp of each row (``sdpa.lse``).

    Returns
    -------
    out or (out, lse)
        ``out`` ``(B, H_q, N_q, D_v)`` in the input dtype; ``lse`` ``(B, H_q, N_q)``, which MAY be
        float32 for 16-bit inputs.

    Notes
    -----
    PyTorch's ``scaled_dot_product_attention`` takes ``is_causal`` (top-left) and a mask that is
    either boolean or additive; FlashAttention takes ``causal`` (bottom-right since 2.1),
    ``window_size``, ``softcap`` and ``alibi_slopes``; ONNX ``Attention`` takes ``is_causal`` and
    ``softcap``. Here each rule has its own argument and one meaning (``causal`` names its corner).
    What is an error is :mod:`attnspec.validation`; the reference is
    :func:`attnspec.reference.sdpa.sdpa`.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.scale", op="sdpa")
def scale(d_qk, scale=None):
    """The scale is explicit; its default is ``1 / sqrt(D_qk)``.

    ``scale`` MUST multiply the raw dot product ``dot(q_i, k_j)`` before any other score
    modifier. When ``scale`` is ``None`` an implementation MUST use ``1 / sqrt(D_qk)`` (the query
    and key head dimension, never ``D_v``). A given scale MUST be used as given: models such as
    Gemma-2 set it to other values.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.lse", op="sdpa")
def lse():
    """The log-sum-exp output is the natural logarithm of the softmax denominator.

    ``lse[b, h, i] = log(sum over j in V(i) of exp(s[j]))`` with ``s`` the final score after
    scale, softcap, bias and ALiBi. The logarithm is natural (base e): a kernel that keeps a
    base-2 LSE internally MUST convert it before returning it. A row with no visible key has
    ``lse = -inf``. When requested (``return_lse=True``) the LSE is returned beside the output
    with shape ``(B, H_q, N_q)``.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.fully_masked", op="sdpa")
def fully_masked():
    """A query row with no visible key outputs exactly zero and has LSE ``-inf``.

    When ``V(i)`` is empty (causal offset, window, mask, padding or a zero-length sequence),
    ``out[b, h, i, :]`` MUST be ``+0.0`` or ``-0.0`` in every element and ``lse[b, h, i]`` MUST be
    ``-inf``. NaN is never a conforming result. This follows flash-attn and ONNX (after its
    erratum); PyTorch's SDPA returned NaN here on some paths.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.gqa", op="sdpa")
def gqa(h, h_q, h_kv):
    """Grouped-query attention: query head ``h`` reads key/value head ``h // (H_q // H_kv)``.

    ``H_q`` MUST be a multiple of ``H_kv``; ``H_kv = 1`` is multi-query attention and
    ``H_kv = H_q`` is multi-head attention. Consecutive query heads share a key/value head
    (``repeat_interleave``, not tiling ``h % H_kv``). The result MUST equal attention with
    ``k`` and ``v`` repeated along the head axis; an implementation SHOULD NOT materialise
    the repetition.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.mask", op="sdpa")
def mask():
    """A boolean mask selects visible keys: ``True`` means the query MAY attend to the key.

    ``mask`` has a boolean dtype and is broadcastable to ``(B, H_q, N_q, N_k)``. Key ``j`` is in
    ``V(i)`` only if ``mask[b, h, i, j]`` is ``True``. A mask is a visibility rule, not a score:
    it intersects with the other rules and never changes a visible score.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.bias", op="sdpa")
def bias():
    """An additive bias is added to the score after scale and softcap.

    ``bias`` is a floating array broadcastable to ``(B, H_q, N_q, N_k)`` whose entries are finite
    or ``-inf`` (NaN and ``+inf`` are errors). It is added after the
    softcap, so the cap bounds ``scale * dot(q_i, k_j)`` only. A ``-inf`` bias entry makes the
    key carry zero weight; a row whose every bias entry is ``-inf`` follows
    ``sdpa.fully_masked``. Adding a per-row constant ``c[b, h, i]`` to the bias MUST leave the
    output unchanged and shift the LSE by ``c[b, h, i]``.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.softcap", op="sdpa")
def softcap(s, cap):
    """Logit soft-capping: ``s = cap * tanh(s / cap)``, applied before bias and masks.

    ``cap`` is a finite positive number, or ``None`` for no capping. The cap applies to
    ``scale * dot(q_i, k_j)`` and precedes bias, ALiBi and every visibility rule. Capping a
    masked ``-inf`` score would give ``-cap`` and leak weight into masked keys: an implementation
    MUST NOT cap after masking. (Gemma-2 uses ``cap = 50``; ONNX moved its softcap before the
    mask for the reason above.)

    .. versionadded:: 0.1.0
    """


@clause("sdpa.alibi", op="sdpa")
def alibi(b, h, i, j, slopes, offset):
    """ALiBi as a score modifier: ``alibi(b, h, i, j) = -slopes[b, h] * |i + offset_b - j|``.

    ``alibi_slopes`` has shape ``(H_q,)`` or ``(B, H_q)``. The distance is measured from the
    query's bottom-right-aligned position, ``offset_b = N_k(b) - N_q(b)`` with the effective
    lengths of batch item ``b`` (clause ``sdpa.padding``); this is flash-attn's symmetric form.
    The bias is added after the softcap, like ``bias``. Slopes for a given head count are
    defined by ``alibi.slopes``. On keys ``j <= i + offset_b`` this equals the causal form
    ``slope * (j - i - offset_b)`` of ``alibi.bias``, so under a bottom-right causal mask the two
    forms give the same output and LSE. (flash-attn's causal path adds ``slope * j`` instead, which
    differs by the per-row constant ``slope * (i + offset_b)``: the same output, another LSE; a
    kernel that does so conforms to ``sdpa.alibi`` for the output and not for ``sdpa.lse``.)

    .. versionadded:: 0.1.0
    """


# ---- visibility rules: which keys a query may attend to ------------------------------------------


@clause("sdpa.causal.top_left", op="sdpa")
def causal_top_left(i, j):
    """Causal mask aligned to the top-left corner: key ``j`` is visible to query ``i`` iff ``j <= i``.

    Requested with ``causal="top_left"``. This is PyTorch's ``is_causal=True``
    (``tril(diagonal=0)``) and ``torch.nn.attention.bias.causal_upper_left``. When
    ``N_q > N_k`` every query sees at least key 0; when ``N_q < N_k`` the last keys are
    invisible to every query. Example, ``N_q = 2``, ``N_k = 5``::

        1 0 0 0 0
        1 1 0 0 0

    .. versionadded:: 0.1.0
    """


@clause("sdpa.causal.bottom_right", op="sdpa")
def causal_bottom_right(i, j, offset):
    """Causal mask aligned to the bottom-right corner: visible iff ``j <= i + offset(b)``.

    Requested with ``causal="bottom_right"``. The last query sees the last key, as in decoding
    where the queries are the newest tokens. This is flash-attn's ``causal=True`` (since 2.1)
    and ``torch.nn.attention.bias.causal_lower_right``. When ``N_q > N_k`` the first
    ``N_q - N_k`` rows see no key and follow ``sdpa.fully_masked``. Examples::

        N_q = 2, N_k = 5:      N_q = 5, N_k = 2:
        1 1 1 1 0              0 0
        1 1 1 1 1              0 0
                               0 0
                               1 0
                               1 1

    With ``q_lens``/``kv_lens`` the alignment uses each batch item's effective lengths.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.window", op="sdpa")
def window(i, j, offset, left, right):
    """Sliding window ``(left, right)``: visible iff ``i + offset(b) - left <= j <= i + offset(b) + right``.

    Both bounds are inclusive and bottom-right aligned, as in flash-attn's ``window_size``: a
    query sees ``left`` keys before its aligned position, the key at it, and ``right`` keys after.
    ``-1`` means unbounded on that side; ``(-1, -1)`` (or ``None``) is no window;
    ``(left, 0)`` is a causal bottom-right window. ``left`` and ``right`` are integers
    ``>= -1``. Window ``(w - 1, 0)`` attends to exactly ``w`` keys where all exist
    (implementations have disagreed by one here: HF eager 2048 keys, FA2 2049).
    ``window_align="top_left"`` aligns it to the other corner (``sdpa.window.top_left``).

    Notes
    -----
    ONNX's ``Attention`` (opset 23 and 25) aligns ``left_window_size``/``right_window_size`` as it
    aligns ``is_causal``: top-left without a KV cache (``sdpa.window.top_left``), bottom-right with
    one (this clause). The two agree where ``N_q = N_k`` and no lengths are given.

    .. versionadded:: 0.1.0
    """


@clause("sdpa.window.top_left", op="sdpa", since="0.2.0")
def window_top_left(i, j, left, right):
    """Sliding window aligned top-left: visible iff ``i - left <= j <= i + right``.

    Requested with ``window=(left, right), window_align="top_left"``. The window of ``sdpa.window``
    measured from the query's own index rather than from its bottom-right aligned position; the
    rest is the same (inclusive bounds, ``-1`` unbounded, lengths still hide padding). This is
    ONNX ``Attention``'s window without a KV cache and a ``tril``/``triu`` band in PyTorch; it
    differs from ``sdpa.window`` wherever ``N_q != N_k`` or the lengths differ. Example,
    ``N_q = 2``, ``N_k = 5``, ``window=(1, 0)``::

        top-left:      bottom-right (sdpa.window):
        1 0 0 0 0      0 0 1 1 0
        1 1 0 0 0      0 0 0 1 1

    .. versionadded:: 0.2.0
    """


@clause("sdpa.padding", op="sdpa")
def padding(b, i, j, q_lens, kv_lens):
    """Per-batch lengths: visible iff ``i < q_lens[b]`` and ``j < kv_lens[b]``.

    ``q_lens`` and ``kv_lens`` are integer arrays of shape ``(B,)`` with
    ``0 <= q_lens[b] <= N_q`` and ``0 <= kv_lens[b] <= N_k``; positions past a length are
    padding. Padded query rows have no visible key: their output is zero and their LSE
    ``-inf`` (``sdpa.fully_masked``). A length of zero is allowed. Padded positions MUST NOT be
    read into the result: NaN stored there leaves every output finite. The causal and window
    rules and ALiBi align with the effective lengths (``offset(b) = kv_lens[b] - q_lens[b]``),
    as flash-attn's variable-length kernels do.

    .. versionadded:: 0.1.0
    """
