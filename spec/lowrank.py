"""Low-rank and memory attention: Linformer projections, Transformer-XL segment memory.

Shapes as in :mod:`attnspec.sdpa`: ``q`` ``(B, H_q, N_q, D_qk)``, ``k`` ``(B, H_kv, N, D_qk)``,
``v`` ``(B, H_kv, N, D_v)``, with grouped-query heads (clause ``sdpa.gqa``) allowed. Every
operation here is ``sdpa`` on keys and values built in a defined way, so its accuracy follows
the tolerance policy of dense attention, plus the error of that construction.
"""

from attnspec.clauses import clause, operations

operations(
    linformer="linformer(q, k, v, *, e, f, scale=None) -> out",
    xl_attention="xl_attention(q, k, v, *, mem_k, mem_v, scale=None) -> out",
    xl_recurrent="xl_recurrent(q, k, v, *, segment_len, mem_len, scale=None) -> out",
)


@clause("linformer", op="linformer")
def linformer(q, k, v, *, e, f, scale=None):
    """Linformer: keys and values projected along the sequence, ``softmax(scale Q (E K)^T) (F V)``.

    Wang et al., "Linformer: Self-Attention with Linear Complexity" (2020), its ``head_i``. The
    paper writes ``E_i, F_i in R^(n x k)`` yet uses ``E_i K W_i^K`` with ``K`` of ``n`` rows,
    which needs ``k x n``: ``e`` here is the matrix that multiplies ``K``, of shape
    ``(k_proj, N)``. The projections are given: ``e`` and ``f`` have the same shape, either
    ``(k_proj, N)`` (one pair shared by every batch item and head, the paper's headwise sharing;
    ``e`` and ``f`` the same array is its key-value sharing) or ``(H_kv, k_proj, N)`` (one pair
    per key/value head, the paper's default). With ``E`` and ``F`` the projections of key/value head ``g``::

        k_proj[b, g] = E @ k[b, g]          # (k_proj, D_qk)
        v_proj[b, g] = F @ v[b, g]          # (k_proj, D_v)
        out = sdpa(q, k_proj, v_proj, scale=scale)

    ``E`` projects the keys and ``F`` the values, never the other way round. ``k_proj >= 1`` and
    ``N >= 1``; ``N_q`` MAY differ from ``N``. ``scale`` defaults to ``1 / sqrt(D_qk)``.

    - With identity projections (``k_proj = N``, ``E = F = I``) the result MUST equal ``sdpa``
      without a mask; with a permutation matrix for both, too (attention without a mask does not
      see the order of its keys).
    - Linformer has no causal form: every projected key mixes all ``N`` positions, future ones
      included, so a causal mask over the original positions has no meaning on the ``k_proj``
      projected ones (the paper applies it to encoders). ``linformer`` takes no ``causal``,
      ``mask`` or other visibility option; passing one MUST raise an error rather than be ignored.
    - Accuracy: the tolerance policy, the naive error being the projections and the attention
      evaluated in the dtype with float32 accumulation. A kernel MAY store ``E K`` and ``F V`` in
      the dtype; the bound's sensitivity term includes the exact attention on them so rounded
      (with a nearly one-hot softmax that rounding alone can change which key wins).

    .. versionadded:: 0.1.0
    """


@clause("linformer.cost", op="linformer")
def linformer_cost():
    """Linformer needs memory linear in ``N`` for a fixed ``k_proj``.

    Besides its inputs and outputs, ``linformer`` with ``N_q = N`` MUST NOT hold an ``N x N``
    array: its peak additional memory for fixed ``k_proj``, ``B``, ``H`` and ``D`` grows at most
    linearly in ``N``. The projections come first (``E K`` is ``k_proj x D_qk``); multiplying
    ``Q K^T`` before projecting (``(Q K^T) E^T``, equal in exact arithmetic) is quadratic and does
    not conform. Checked with the backend's deterministic peak-memory counter.

    .. versionadded:: 0.1.0
    """


@clause("xl.memory", op="xl_attention")
def xl_memory(q, k, v, *, mem_k, mem_v, scale=None):
    """Transformer-XL attention of a segment over ``[memory; segment]``, causal within the segment.

    Dai et al., "Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context" (2019),
    section 3.2. ``q``, ``k`` and ``v`` are one segment of ``N`` tokens (``q.shape[2]`` MUST equal
    ``k.shape[2]``); ``mem_k`` ``(B, H_kv, M, D_qk)`` and ``mem_v`` ``(B, H_kv, M, D_v)`` hold the
    keys and values of the ``M`` tokens before it, ``M >= 0`` (``M = 0`` is plain causal
    attention). Segment token ``i`` sees all ``M`` memory tokens and segment tokens ``0 .. i``::

        out = sdpa(q, concat([mem_k, k]), concat([mem_v, v]), causal="bottom_right", scale=scale)

    concatenated along the sequence axis: key ``j`` of the concatenation is visible to query ``i``
    iff ``j <= i + M`` (the official code's ``triu(ones(N, M + N), diagonal=1 + M)`` marks the
    invisible keys). A top-left aligned mask (``j <= i``) hides memory from the first queries and
    does not conform. The memory is given, never updated here (clause ``xl.recurrence``).

    Out of scope: Transformer-XL's relative positional encoding (the terms with ``R_(i-j)``,
    ``u`` and ``v`` of section 3.3) is a score modifier that the clause leaves out; positions enter
    only through the given ``q``, ``k`` and ``v``. The official code's ``same_length`` option and
    ``ext_len`` are left out too.

    .. versionadded:: 0.1.0
    """


@clause("xl.recurrence", op="xl_recurrent")
def xl_recurrence(q, k, v, *, segment_len, mem_len, scale=None):
    """Segment-level recurrence: a long sequence processed segment by segment with a memory of ``mem_len``.

    ``q``, ``k`` and ``v`` cover the whole sequence of ``N`` tokens (``N_q = N``). With
    ``L = segment_len >= 1`` and ``M = mem_len >= 0``, segment ``s`` holds positions
    ``s L .. min((s + 1) L, N) - 1`` (the last may be shorter). Segment 0 has an empty memory;
    each following segment's memory is the last ``M`` keys and values of the previous segment's
    ``[memory; segment]`` (fewer while fewer exist), as the official ``_update_mems`` keeps
    ``cat([mems, hids])[max(0, mlen + qlen - mem_len):]``. Each segment's output is ``xl.memory``
    over its memory. The memory of segment ``s`` is therefore positions
    ``max(0, s L - M) .. s L - 1``, which may span several earlier segments when ``M > L``, and the
    result MUST equal single-pass attention with the band::

        visible(i, j)  iff  L * floor(i / L) - M <= j <= i

    (``sdpa`` with this mask). A query sees between ``M + 1`` and ``M + L`` keys where they exist:
    the band is aligned to segment starts, not a sliding window. ``L >= N`` is causal attention
    (one segment); ``M = 0`` is block-diagonal causal attention.

    Caching keys and values is exact: the official code caches each layer's input hidden states
    and recomputes keys and values from them with the same weights. Relative positional encoding
    is left out as in ``xl.memory``.

    .. versionadded:: 0.1.0
    """
