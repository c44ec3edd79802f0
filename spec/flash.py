"""The flash algorithm: tiled online softmax, split-KV merging and KV-cache decoding.

These clauses define how partial results combine. They are exact identities in real
arithmetic: every tiling, every split and step-by-step decoding MUST give ``sdpa``'s result
within the tolerance policy.
"""

from attnspec.clauses import clause, operations

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
