"""The flash algorithm: tiled online softmax, split-KV merging and KV-cache decoding.

These clauses define how partial results combine. They are exact identities in real
arithmetic: every tiling, every split and step-by-step decoding MUST give ``sdpa``'s result
within the tolerance policy.
"""

from typing import Any, Literal

from attnspec.clauses import Array, clause, operation, operations

operations(
    flash_forward="flash_forward(q, k, v, *, block_q, block_k, **sdpa_options) -> (out, lse)",
    merge_partials="merge_partials(outs, lses) -> (out, lse)",
    split_kv="split_kv(q, k, v, *, num_splits, **sdpa_options) -> (out, lse)",
    decode="decode(q, k_cache, v_cache, *, cache_lens, num_splits=1, **sdpa_options) -> (out, lse)",
)


@clause("flash.tiled", op="flash_forward")
def tiled(q, k, v, *, block_q, block_k, **sdpa_options):
    """Tiled forward pass with an online softmax (Dao et al., 2022; Milakov & Gimelshein, 2018).

    Queries are processed in tiles of ``block_q`` rows and keys in tiles of ``block_k``. For each
    query tile the state ``(m, l, acc)`` starts at ``(-inf, 0, 0)`` and, for every key tile with
    scores ``s`` (after scale, softcap, bias and masks), becomes::

        m'  = max(m, rowmax(s))
        l'  = l * exp(m - m') + rowsum(exp(s - m'))
        acc = acc * exp(m - m') + exp(s - m') @ v_tile

    with ``exp(-inf - (-inf))`` taken as 0. At the end ``out = acc / l`` and ``lse = m + log(l)``,
    or ``0`` and ``-inf`` for a row with ``l = 0``. Key tiles with no visible pair MAY be skipped.
    For every ``block_q >= 1`` and ``block_k >= 1``, including sizes that do not divide the lengths,
    the result MUST equal ``sdpa`` with the same options. Every option of ``sdpa`` applies.

    .. versionadded:: 0.1.0
    """


@clause("flash.memory", op="flash_forward")
def memory():
    """The tiled forward pass needs memory linear in the sequence length.

    Besides its inputs and outputs, ``flash_forward`` MUST NOT hold an ``N_q x N_k`` array: its
    peak additional memory for fixed ``block_q``, ``block_k``, ``B``, ``H`` and ``D`` grows at most
    linearly in ``N = N_q = N_k``. The suite checks this with the backend's own peak-memory
    counter, which is deterministic, never with timings.

    .. versionadded:: 0.1.0
    """


@clause("flash.merge", op="merge_partials")
def merge(outs, lses):
    """Merge partial attention results over disjoint key sets by their LSE.

    ``outs`` is ``(S, B, H, N, D_v)`` and ``lses`` is ``(S, B, H, N)``: ``S`` partial results, each
    the normalised attention over one subset of the keys. With ``M = max_s lses[s]``::

        lse = M + log(sum_s exp(lses[s] - M))
        out = sum_s exp(lses[s] - lse) * outs[s]

    A partial with ``lse = -inf`` (no visible key in its subset) contributes nothing, whatever its
    ``out`` holds, NaN included. If every partial is ``-inf`` the merged row is ``0`` with LSE
    ``-inf``.

    .. versionadded:: 0.1.0
    """


@clause("flash.split_kv", op="split_kv")
def split_kv(q, k, v, *, num_splits, **sdpa_options):
    """Split-KV (flash-decoding): attention over contiguous key splits, merged by ``flash.merge``.

    The keys ``0 .. N_k-1`` are cut into ``num_splits`` contiguous ranges of
    ``ceil(N_k / num_splits)`` keys (the last may be shorter or empty); each split yields a partial
    ``(out, lse)`` over its keys with every visibility rule still evaluated at the keys' global
    positions; the partials merge by ``flash.merge``. The result MUST equal ``sdpa``.
    ``num_splits`` is any integer ``>= 1``: above ``N_k`` the splits past the last key are empty
    and contribute nothing, so computing at most ``N_k`` of them suffices.

    .. versionadded:: 0.1.0
    """


@clause("flash.decode", op="decode")
def decode(q, k_cache, v_cache, *, cache_lens, num_splits=1, **sdpa_options):
    """Decoding against a KV cache: the newest queries attend to the cached keys causally.

    ``k_cache`` is ``(B, H_kv, N_max, D_qk)`` and ``v_cache`` ``(B, H_kv, N_max, D_v)``; the first
    ``cache_lens[b]`` positions of batch item ``b`` hold keys, the new tokens' keys included, and
    the rest is unused capacity that MUST NOT be read (NaN there leaves the output finite).
    ``q`` is ``(B, H_q, N_new, D_qk)``: the queries of the last ``N_new`` tokens. The result equals
    ``sdpa(q, k_cache, v_cache, causal="bottom_right", kv_lens=cache_lens, **sdpa_options)``:
    query ``i`` sees keys ``j <= cache_lens[b] - N_new + i``. Appending one token at a time and
    decoding it MUST reproduce the rows of the causal pass over the whole sequence.
    ``num_splits`` partitions the cache as ``flash.split_kv`` does.

    .. versionadded:: 0.1.0
    """


@operation
def paged_decode(
    q: Array,
    k_pages: Array,
    v_pages: Array,
    *,
    block_table: Array,
    cache_lens: Array,
    layout: Literal["NHD", "HND"] = "NHD",
    num_splits: int = 1,
    **sdpa_options: Any,
) -> tuple[Array, Array]:
    """Decoding against a paged KV cache: a pool of pages and a block table per sequence.

    Parameters
    ----------
    q
        ``(B, H_q, N_new, D_qk)``: the queries of each sequence's ``N_new`` newest tokens.
    k_pages, v_pages
        The page pool, one floating dtype with ``q``. ``layout="NHD"``: ``(num_pages, page_size,
        H_kv, D_qk)`` and ``(num_pages, page_size, H_kv, D_v)``; ``layout="HND"``: ``(num_pages,
        H_kv, page_size, D_qk)`` and ``(num_pages, H_kv, page_size, D_v)``. ``page_size >= 1``.
    block_table
        Integer ``(B, max_pages)``: ``block_table[b, i]`` is the pool index of page ``i`` of
        sequence ``b`` (its tokens ``i * page_size`` to ``(i + 1) * page_size - 1``).
    cache_lens
        Integer ``(B,)``, ``0 <= cache_lens[b] <= max_pages * page_size``: the tokens cached for
        each sequence, the ``N_new`` newest included.
    layout
        ``"NHD"`` (token-major pages, ``flash.paged``) or ``"HND"`` (head-major pages,
        ``flash.paged.head_major``); named, never inferred from the shapes.
    num_splits
        As in ``decode`` (``flash.split_kv``).
    **sdpa_options
        Every option of ``sdpa`` but ``causal``, ``q_lens`` and ``kv_lens`` (set by decoding);
        ``mask`` and ``bias`` broadcast to ``(B, H_q, N_new, max_pages * page_size)``.

    Returns
    -------
    (out, lse)
        ``out`` ``(B, H_q, N_new, D_v)`` in the input dtype, ``lse`` ``(B, H_q, N_new)``, as
        ``decode`` returns them.

    Notes
    -----
    vLLM's paged attention and FlashAttention's ``flash_attn_with_kvcache(..., block_table=)``
    take ``(num_blocks, block_size, H_kv, D)`` pages, ``NHD`` here; FlashInfer takes either layout
    (``kv_layout="NHD"`` or ``"HND"``) and describes a sequence's pages by ``indptr``/``indices``
    instead of a padded table, which is this table's rows without their unused entries.
    What is an error is :func:`attnspec.validation.paged_cache`; the reference is
    :func:`attnspec.reference.paged.paged_decode`.

    .. versionadded:: 0.2.0
    """
    raise NotImplementedError  # the decorator replaces the body: the spec computes nothing


@clause("flash.paged", op="paged_decode", since="0.2.0")
def paged(q, k_pages, v_pages, *, block_table, cache_lens, num_splits=1, **sdpa_options):
    """Decoding against a paged KV cache equals ``flash.decode`` on the cache its block table gathers.

    The cache is a pool of ``num_pages`` pages of ``page_size >= 1`` token slots each, shared by
    every sequence of the batch. With ``layout="NHD"`` (the default) ``k_pages`` is
    ``(num_pages, page_size, H_kv, D_qk)`` and ``v_pages`` ``(num_pages, page_size, H_kv, D_v)``.
    ``block_table`` is an integer ``(B, max_pages)`` array whose entry ``block_table[b, i]`` names
    the page that holds tokens ``i * page_size .. (i + 1) * page_size - 1`` of sequence ``b``; the
    first ``cache_lens[b] <= max_pages * page_size`` tokens are cached. Token ``t < cache_lens[b]``
    of sequence ``b`` is therefore::

        k[b, g, t, :] = k_pages[block_table[b, t // page_size], t % page_size, g, :]

    and ``v`` likewise. With ``N_max = max_pages * page_size`` the result, output and LSE, MUST
    equal::

        decode(q, k, v, cache_lens=cache_lens, num_splits=num_splits, **sdpa_options)

    the ``N_new`` queries of ``q`` ``(B, H_q, N_new, D_qk)`` seeing keys
    ``t <= cache_lens[b] - N_new + i`` (causal, bottom-right), query head ``h`` reading KV head
    ``h // (H_q // H_kv)`` (``sdpa.gqa``), every other option of ``sdpa`` applying as in ``decode``.

    - The pages in use by sequence ``b`` are its entries ``i < ceil(cache_lens[b] / page_size)``;
      each MUST be a pool index, ``0 <= block_table[b, i] < num_pages``, else ``ValueError``
      naming ``block_table``. Entries past them are the subject of ``flash.paged.unused``.
    - Pages MAY be shared: one pool index MAY appear in the tables of several sequences (a common
      prefix) and more than once in one table. A table need not be ordered: a sequence's pages
      MAY lie anywhere in the pool, in any order.
    - The last page in use is partial when ``page_size`` does not divide ``cache_lens[b]``: its
      first ``cache_lens[b] - (ceil(cache_lens[b] / page_size) - 1) * page_size`` slots are read,
      and no more.
    - A sequence with ``cache_lens[b] = 0`` uses no page; its rows follow ``sdpa.fully_masked``.

    .. versionadded:: 0.2.0
    """


@clause("flash.paged.head_major", op="paged_decode", since="0.2.0")
def paged_head_major(q, k_pages, v_pages, *, block_table, cache_lens, layout="HND", **options):
    """The head-major page layout, ``layout="HND"``: pages ``(num_pages, H_kv, page_size, D)``.

    ``k_pages`` is ``(num_pages, H_kv, page_size, D_qk)`` and ``v_pages``
    ``(num_pages, H_kv, page_size, D_v)``: page ``p`` holds, for each KV head, its tokens
    contiguously (FlashInfer's ``"HND"``; ``"NHD"``, ``flash.paged``, holds each token's heads
    contiguously). Token ``t < cache_lens[b]`` of sequence ``b`` is::

        k[b, g, t, :] = k_pages[block_table[b, t // page_size], g, t % page_size, :]

    so the result MUST equal ``flash.paged`` (``layout="NHD"``) on the same pool with axes 1 and 2
    of every page exchanged, with every rule of ``flash.paged`` and ``flash.paged.unused``
    unchanged. The layout is an argument, never inferred from the shapes: a pool with
    ``H_kv = page_size`` fits both. Any other ``layout`` is a ``ValueError`` naming it.

    .. versionadded:: 0.2.0
    """


@clause("flash.paged.unused", op="paged_decode", since="0.2.0")
def paged_unused(q, k_pages, v_pages, *, block_table, cache_lens, **options):
    """What a sequence does not use is never read: table entries past its pages, slots past its length.

    - An entry ``block_table[b, i]`` with ``i >= ceil(cache_lens[b] / page_size)`` is not in use.
      It MAY hold any integer, a page of another sequence, a page of garbage, ``-1`` or an index
      at or past ``num_pages`` (serving frameworks pad their tables so), and MUST NOT be
      dereferenced: it raises no error, and nothing of the page it names reaches the result.
    - The slots of the last page in use at and past the sequence's length (slot
      ``t % page_size`` for ``t >= cache_lens[b]``) are not the sequence's (another sequence
      sharing the page may use them) and MUST NOT be read either.

    Both are memory past a length, as in ``flash.decode`` and ``sdpa``: NaN stored there leaves
    every output finite, and a finite value stored there, however large, leaves the result
    unchanged.

    .. versionadded:: 0.2.0
    """
