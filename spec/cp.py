"""Context parallelism: one attention call over a sequence sharded across ``P`` ranks.

The sequence of ``N`` tokens is cut into ``P`` shards of ``N / P`` tokens by a layout
(``cp.layout.*``); rank ``r`` holds the queries, keys and values of shard ``r``. A scheme computes
attention without gathering the sequence on any rank: ring attention passes K/V shards around the
ring and merges per-step partials by their LSE (``cp.ring``); Ulysses exchanges the sequence axis
for the head axis by all-to-all (``cp.ulysses``). Whatever the scheme, the result is ``sdpa`` on
the gathered sequence, returned in the layout's shards (``cp``).

Scope: self-attention (one sequence for queries and keys), with ``scale``, ``causal`` and
``seq_lens``; the other ``sdpa`` options are not yet clauses of this family.
"""

from __future__ import annotations

from typing import Literal

from attnspec import flash as _flash  # noqa: F401 (cp.ring merges by flash.merge: registered first)
from attnspec.clauses import Array, clause, operation

#: The sharding layouts (``cp.layout.*``) and the schemes (``cp.ring``, ``cp.ulysses``).
LAYOUTS = ("contiguous", "zigzag")
SCHEMES = ("ring", "ulysses")


@operation
def context_parallel(
    q: Array,
    k: Array,
    v: Array,
    *,
    layout: Literal["contiguous", "zigzag"] = "contiguous",
    scheme: Literal["ring", "ulysses"] = "ring",
    scale: float | None = None,
    causal: Literal["top_left", "bottom_right"] | None = None,
    seq_lens: Array | None = None,
) -> tuple[Array, Array]:
    """Attention over a sequence held in ``P`` shards, one per rank, returned in the same shards.

    Parameters
    ----------
    q, k, v
        ``(P, B, H_q, C, D_qk)``, ``(P, B, H_kv, C, D_qk)``, ``(P, B, H_kv, C, D_v)``, one floating
        dtype: index 0 is the rank, ``C = N / P`` the shard length. Shard ``r`` holds the tokens
        at the global positions ``layout`` assigns to rank ``r``, in increasing order.
    layout
        ``"contiguous"`` (``cp.layout.contiguous``) or ``"zigzag"`` (``cp.layout.zigzag``).
    scheme
        ``"ring"`` (``cp.ring``) or ``"ulysses"`` (``cp.ulysses``); the result is the same.
    scale
        As in ``sdpa`` (``sdpa.scale``).
    causal
        None, or causal at global positions (``cp.causal.pairs``); queries and keys are one
        sequence, so ``"top_left"`` and ``"bottom_right"`` coincide.
    seq_lens
        Integer ``(B,)``, ``0 <= seq_lens[b] <= N``: the valid tokens of each batch item, at
        global positions (``cp.lengths``); None is ``N``.

    Returns
    -------
    (out, lse)
        ``out`` ``(P, B, H_q, C, D_v)`` in the input dtype and ``lse`` ``(P, B, H_q, C)``, in the
        layout's shards (``cp.lse``).

    Notes
    -----
    Ring attention (Liu et al., 2023), its zigzag load balancing (``zhuzilin/ring-flash-attention``;
    Llama 3's context parallelism and PyTorch's ``context_parallel`` with ``_cp_options.
    enable_load_balance`` use the same two-chunk layout) and DeepSpeed-Ulysses (Jacobs et al.,
    2023). The shards are stacked here so that one process can call the operation; a distributed
    backend scatters index ``r`` to rank ``r``. The reference, which simulates the ranks step by
    step, is :func:`attnspec.reference.cp.context_parallel`.

    .. versionadded:: 0.2.0
    """
    raise NotImplementedError  # the decorator replaces the body: the spec computes nothing


@clause("cp", op="context_parallel", since="0.2.0")
def cp(q, k, v, *, layout="contiguous", scheme="ring", scale=None, causal=None, seq_lens=None):
    """Context-parallel attention equals ``sdpa`` on the gathered sequence, returned in shards.

    With ``pos(r, t)`` the global position of token ``t`` of shard ``r`` (``cp.layout.*``), the
    gathered arrays are ``Q[b, h, pos(r, t)] = q[r, b, h, t]`` (``K``, ``V`` likewise), and::

        O, L = sdpa(Q, K, V, scale=scale, causal=causal, q_lens=seq_lens, kv_lens=seq_lens,
                    return_lse=True)
        out[r, b, h, t] = O[b, h, pos(r, t)],  lse[r, b, h, t] = L[b, h, pos(r, t)]

    within the tolerance policy, for every ``P >= 1`` and either scheme. ``sdpa.gqa`` applies.

    - ``q``, ``k``, ``v`` MUST have 5 dimensions and one ``P`` and ``C``; ``P = 0`` is an error
      naming ``q``. A layout's condition on ``C`` unmet is an error naming ``layout``.
    - ``N = P * C = 0`` is allowed: empty results.

    .. versionadded:: 0.2.0
    """


@clause("cp.layout.contiguous", op="context_parallel", since="0.2.0")
def layout_contiguous():
    """The contiguous layout: rank ``r`` holds positions ``r * C`` to ``(r + 1) * C - 1``.

    ``pos(r, t) = r * C + t``. Any ``C >= 0``. Under a causal mask rank ``P - 1`` has ``P`` times
    the visible pairs of rank 0 (``cp.layout.zigzag`` balances them).

    .. versionadded:: 0.2.0
    """


@clause("cp.layout.zigzag", op="context_parallel", since="0.2.0")
def layout_zigzag():
    """The zigzag (load-balanced) layout: rank ``r`` holds chunks ``r`` and ``2P - 1 - r``.

    The sequence is cut into ``2P`` chunks of ``c = C / 2`` tokens; ``C`` MUST be even (else
    ``ValueError`` naming ``layout``). Shard ``r`` is chunk ``r`` followed by chunk ``2P - 1 - r``::

        pos(r, t) = r * c + t                      for 0 <= t < c
        pos(r, t) = (2P - 1 - r) * c + (t - c)     for c <= t < C

    Positions increase along every shard. The inverse: position ``i`` is on rank ``i // c`` if
    ``i // c < P``, else on rank ``2P - 1 - i // c``. ``P = 1`` is the identity.

    Notes: under a causal mask every rank holds ``2P * c^2 + c`` visible pairs per head, the same
    for all. PyTorch's ``context_parallel`` (load balancing on) and ring-flash-attention's
    ``zigzag_ring_flash_attn`` use this layout.

    .. versionadded:: 0.2.0
    """


@clause("cp.ring", op="context_parallel", since="0.2.0")
def ring():
    """Ring attention: ``P`` steps, K/V shards passed around the ring, partials merged by LSE.

    At step ``s = 0 .. P - 1`` rank ``r`` holds the K/V shard of rank ``(r - s) mod P`` (at step 0
    its own; then it sends what it holds to rank ``(r + 1) mod P`` and receives from
    ``(r - 1) mod P``). It computes the partial ``(out_s, lse_s)``: attention of its queries over
    the held keys only, every rule (``causal``, ``seq_lens``) evaluated at global positions, and
    ``(0, -inf)`` for a row with no visible held key. Its result is the ``flash.merge`` of its ``P``
    partials (merging them one step at a time is the same, in real arithmetic). The result MUST
    equal ``cp``.

    Notes: a backend MAY overlap the exchange of step ``s + 1`` with the compute of step ``s``
    and MAY skip a partial with no visible pair (``cp.causal.pairs``).

    .. versionadded:: 0.2.0
    """


@clause("cp.causal.pairs", op="context_parallel", since="0.2.0")
def causal_pairs():
    """Under a causal mask a (query shard, key shard) pair is computed whole, skipped, or diagonal.

    A pair of a query run at positions ``a .. a + n - 1`` and a key run at ``b .. b + m - 1`` (a run
    is a shard of ``cp.layout.contiguous``, a chunk of ``cp.layout.zigzag``) is:

    - **full** if ``b + m - 1 <= a``: every key visible to every query, no mask;
    - **skipped** if ``b > a + n - 1``: no key visible, the partial is ``(0, -inf)``;
    - **diagonal** if ``a = b`` (and ``n = m``): causal within, ``j <= i`` at local indices.

    Contiguous: pair ``(r, s)`` is full for ``s < r``, diagonal for ``s = r``, skipped for
    ``s > r``. Zigzag: for ``s < r`` the keys of chunk ``s`` are full for both query chunks and
    chunk ``2P - 1 - s`` is skipped; for ``s > r`` the query chunk ``2P - 1 - r`` sees both key
    chunks whole and chunk ``r`` sees none; ``s = r`` is causal within the shard (positions
    increase along it). Every pair with a visible key MUST be computed with exactly its visible
    keys; a skipped pair MUST contribute nothing.

    .. versionadded:: 0.2.0
    """


@clause("cp.lengths", op="context_parallel", since="0.2.0")
def lengths():
    """``seq_lens`` holds at global positions, wherever the layout puts them.

    Token ``pos(r, t) >= seq_lens[b]`` is padding on whatever rank holds it: as a key it is never
    read (NaN stored there leaves every output finite), as a query its row is ``0`` with LSE
    ``-inf`` (``sdpa.fully_masked``). A length MAY end inside a shard or a zigzag chunk; a shard MAY
    be all padding. Since positions increase along a shard, its valid tokens are its first
    ``count(pos(r, t) < seq_lens[b])``; under zigzag that count is not ``seq_lens[b] - r * C``.

    .. versionadded:: 0.2.0
    """


@clause("cp.lse", op="context_parallel", since="0.2.0")
def lse():
    """The LSE is returned per shard: ``lse[r, b, h, t]`` is ``sdpa``'s LSE at ``pos(r, t)``.

    The natural log (``sdpa.lse``) of the softmax denominator over every visible key of the
    whole sequence, not of the keys of one step; ``-inf`` for a padded or fully masked row; in the
    layout's order, as ``out``. float32 for 16-bit inputs is allowed.

    .. versionadded:: 0.2.0
    """


@clause("cp.ulysses", op="context_parallel", since="0.2.0")
def ulysses():
    """Ulysses: all-to-all from sequence shards to head shards, ``sdpa`` per rank, and back.

    ``H_kv`` MUST be divisible by ``P`` (so ``H_q`` is), else ``ValueError`` naming ``scheme``.
    With ``g = H_q / H_kv``, rank ``r`` receives query heads ``r * H_q / P .. (r + 1) * H_q / P - 1``
    and KV heads ``r * H_kv / P .. (r + 1) * H_kv / P - 1`` of the whole gathered sequence: a GQA
    group (KV head ``j`` and query heads ``j * g .. (j + 1) * g - 1``) stays on one rank, so
    ``sdpa.gqa`` holds per rank. Each rank computes ``sdpa`` on its heads over all ``N`` positions,
    and a second all-to-all returns the sequence shards. The result MUST equal ``cp``.

    .. versionadded:: 0.2.0
    """
