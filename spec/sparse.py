"""Sparse and structured attention: fixed sparsity patterns over the score matrix.

A pattern is a visibility rule ``visible(b, h, p, j)`` over positions of one sequence: ``p`` is
the query's position, ``j`` the key's, both in ``0 .. N_k - 1``. Queries are the last ``N_q``
positions (bottom-right alignment, as in ``sdpa.causal.bottom_right``): query row ``i`` is at
position ``p = i + N_k - N_q``. ``N_q <= N_k`` is therefore required, and a chunked prefill or a
decoding step against a KV cache sees exactly the keys that the same rows see in a pass over the
whole sequence. Every pattern clause below defines ``visible`` and its *extents* ``(B_p, H_p)``:
the batch and head sizes the pattern depends on (1 where it does not).

Parameters are passed flat, by name, beside ``pattern=``. Integers are Python or NumPy integers,
flags are bools, arrays are NumPy arrays of the stated dtype. An unknown pattern, an unknown or
missing parameter, or a parameter of the wrong type, shape or range is an error
(``TypeError``/``ValueError`` naming it), never silently ignored. Floor division ``//`` and
``mod`` are those of integers (the result of ``mod l`` is in ``0 .. l - 1``).
"""

from __future__ import annotations

from typing import Any

from attnspec.clauses import Array, clause, operation


@operation
def sparse_mask(pattern: str, n_q: int, n_k: int, **pattern_params: Any) -> Array:
    """The boolean table of a pattern, ``(B_p, H_p, n_q, n_k)`` (clause ``sparse.mask``).

    Parameters
    ----------
    pattern
        A pattern's name: ``NAME`` of a clause ``sparse.NAME`` that defines ``visible``.
    n_q, n_k
        The numbers of query rows and keys, ``0 <= n_q <= n_k``; rows are the last ``n_q`` positions.
    **pattern_params
        The pattern's parameters, by name, as its clause states them.

    Returns
    -------
    mask
        Boolean ``(B_p, H_p, n_q, n_k)``: ``visible(b, h, i + n_k - n_q, j)``.

    .. versionadded:: 0.1.0
    """


@clause("sparse", op="sparse")
@operation
def sparse(
    q: Array,
    k: Array,
    v: Array,
    *,
    pattern: str,
    scale: float | None = None,
    return_lse: bool = False,
    **pattern_params: Any,
) -> Array | tuple[Array, Array]:
    """Sparse attention is ``sdpa`` with the pattern's mask, bottom-right aligned.

    ``q`` is ``(B, H_q, N_q, D_qk)``, ``k`` ``(B, H_kv, N_k, D_qk)``, ``v`` ``(B, H_kv, N_k, D_v)``;
    ``H_q`` is a multiple of ``H_kv`` and query head ``h`` reads key/value head
    ``h // (H_q // H_kv)`` (``sdpa.gqa``; a backend without grouped heads declines such cases).
    The result MUST equal, output and LSE, within the tolerance policy::

        sdpa(q, k, v, scale=scale, mask=sparse_mask(pattern, N_q, N_k, **pattern_params))

    - ``N_q <= N_k``; ``N_q > N_k`` MUST raise ``ValueError`` (rows before position 0 have no
      defined pattern). Row ``i`` is at position ``i + N_k - N_q``, so the rows of a call with
      ``N_q < N_k`` equal the last ``N_q`` rows of the call with every query.
    - The pattern's extents ``(B_p, H_p)`` MUST each be 1 or ``B`` and ``H_q``, else ``ValueError``.
      The head axis of a pattern indexes query heads.
    - A row with no visible key (possible with ``sparse.block_sparse``) follows
      ``sdpa.fully_masked``: output ``0``, LSE ``-inf``.
    - Keys outside ``V(i)`` MUST NOT influence the output: a finite value stored at an invisible
      key, however large (``1e4``), leaves it unchanged.
    - ``scale`` is as in ``sdpa.scale``; ``return_lse`` as in ``sdpa.lse``.

    How much work an implementation does is the subject of ``sparse.cost``.

    Parameters
    ----------
    q, k, v
        ``(B, H_q, N_q, D_qk)``, ``(B, H_kv, N_k, D_qk)``, ``(B, H_kv, N_k, D_v)``, ``N_q <= N_k``.
    pattern
        A pattern's name: ``NAME`` of a clause ``sparse.NAME``.
    scale
        As in ``sdpa.scale``.
    return_lse
        Also return the log-sum-exp of each row, as in ``sdpa.lse``.
    **pattern_params
        The pattern's parameters, by name, as its clause states them.

    Returns
    -------
    out or (out, lse)
        As those of ``sdpa``.

    Notes
    -----
    FlexAttention expresses the same patterns as a ``mask_mod`` over ``(b, h, q_idx, kv_idx)``
    evaluated block by block; its ``q_idx`` is the row, not the position, so a chunked prefill
    there passes an offset itself. The reference is :func:`attnspec.reference.sparse.sparse`.

    .. versionadded:: 0.1.0
    """


@clause("sparse.mask", op="sparse_mask")
def mask(pattern, n_q, n_k, **pattern_params):
    """The mask table of a pattern: exactly ``visible``, boolean, shape ``(B_p, H_p, N_q, N_k)``.

    ``sparse_mask(pattern, n_q, n_k, **pattern_params)[b, h, i, j]`` is
    ``visible(b, h, i + n_k - n_q, j)`` for the pattern's clause, with the pattern's extents
    ``(B_p, H_p)`` as the leading axes (every result is four-dimensional). The table is exact:
    no tolerance applies. The dtype is boolean. ``n_q`` and ``n_k`` are integers with
    ``0 <= n_q <= n_k``; the parameter checks are those of ``sparse``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.dilated", op="sparse")
def dilated(p, j, *, window, dilation=1, causal=False):
    """Dilated sliding window (Beltagy et al., 2020, Longformer, section 3.1).

    Parameters ``window`` (integer ``w >= 0``), ``dilation`` (integer ``d >= 1``, or an integer
    array of shape ``(H,)``: ``d = dilation[h]`` for query head ``h``) and ``causal`` (bool)::

        visible(b, h, p, j) = (p - j) mod d == 0  and  |p - j| <= w * d  [and j <= p if causal]

    A query sees ``w`` keys on each side, ``d`` positions apart, and itself: ``2w + 1`` keys
    where all exist (``w + 1`` causal). The paper's window size counts both sides (``w/2`` each)
    and its "gaps of size d" are the step between attended keys: ``d = 1`` has no gap and is
    ``sdpa.window`` ``(w, w)``, or ``(w, 0)`` when causal. Longformer gives different heads
    different dilations, hence the per-head form. Extents ``(1, H_d)``: ``H_d = 1`` for an
    integer ``dilation``, else ``len(dilation)``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.longformer", op="sparse")
def longformer(p, j, *, window, global_tokens):
    """Longformer: a sliding window plus global tokens, which attend to all and are attended by all.

    Parameters ``window`` (integer ``w >= 0``) and ``global_tokens``, a boolean array of shape
    ``(N_k,)`` or ``(B, N_k)`` marking the global positions of each batch item (``g[b, x]``;
    the 1-D form applies to every batch item)::

        visible(b, h, p, j) = |p - j| <= w  or  g[b, p]  or  g[b, j]

    A query sees ``w`` keys on each side and itself. The paper's window size counts both sides
    (``w/2`` each, as in ``sparse.dilated``): its window ``512`` is ``window=256`` here. Global
    attention is symmetric (Beltagy et al., 2020, section 3.1): a global query sees
    every key, and every query sees every global key. Longformer computes the global rows with
    separate projections ``Q_g, K_g, V_g``; that is a choice of ``q, k, v`` outside this
    clause, which fixes only the visible pairs. Extents ``(B_g, 1)``: 1 for the 1-D form, else ``B``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.bigbird", op="sparse")
def bigbird(p, j, *, block, window_blocks, global_blocks=None, random_blocks=None):
    """BigBird: block-level sliding window, global blocks and random blocks (Zaheer et al., 2020).

    Positions form blocks of ``block`` (integer ``b >= 1``) consecutive positions: block
    ``x // b`` of ``n_blocks = ceil(N_k / b)``; the last block holds fewer positions when ``b``
    does not divide ``N_k``. With the query's block ``R = p // b`` and the key's ``C = j // b``::

        visible(b, h, p, j) = |R - C| <= window_blocks
                              or R in global_blocks or C in global_blocks
                              or C in random_blocks[h, R, :]

    - ``window_blocks``: integer ``>= 0``, blocks on each side (the paper's 3 sliding blocks is 1).
    - ``global_blocks``: integer array ``(G,)`` of block indices in ``0 .. n_blocks - 1``, or None
      for none. A global block's queries see every key; every query sees a global block's keys
      (the BigBird-ITC form; Google's BigBird code, google-research/bigbird's
      ``bigbird_block_sparse_attention``, and its Hugging Face port make the first and the last
      block global, ``[0, n_blocks - 1]``).
    - ``random_blocks``: integer array ``(H_r, n_blocks, r)`` with entries in
      ``0 .. n_blocks - 1``, or None for none: query block ``R`` of head ``h`` also sees the key
      blocks ``random_blocks[h, R, :]``. The edges are directed: it does not make ``C`` see
      ``R``. The random choice is an input, never drawn inside the operation, so the result is a
      deterministic function of it; duplicates and overlaps with the window are allowed and
      change nothing. (The reference's ``bigbird_random_blocks(n_blocks, r, heads, seed)`` is a
      convenience, not part of this clause.)

    Bidirectional (BigBird is an encoder pattern). Extents ``(1, H_r)``, ``H_r = 1`` without
    ``random_blocks``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.strided", op="sparse")
def strided(p, j, *, stride, factor="merged"):
    """Sparse Transformer, strided pattern (Child et al., 2019, figure 3b).

    With ``l = stride`` (integer ``>= 1``), the paper's two factorised heads ("Two-dimensional
    factorized attention") are::

        A1(p) = { j : max(0, p - l) <= j <= p }          # the previous l keys and itself
        A2(p) = { j : j <= p  and  (p - j) mod l == 0 }   # every l-th earlier key

    ``A1`` holds ``l + 1`` keys where all exist (the paper's ``t = max(0, i - l)``). ``factor``
    selects what one call computes: ``"a1"`` or ``"a2"`` one factorised head, ``"merged"``
    (default) their union ``A1 ∪ A2``, the "merged head" of the paper's "Factorized attention
    heads". Its other two arrangements are compositions of calls: interleaving the factors over residual blocks
    (``factor`` alternating per layer) or giving them to different heads (one call per head
    group). Always causal, as in the paper. In the merged head the key ``p - l`` lies in ``A2`` too,
    so only ``"a1"`` shows whether ``A1`` holds it. Extents ``(1, 1)``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.fixed", op="sparse")
def fixed(p, j, *, stride, summary, factor="merged"):
    """Sparse Transformer, fixed pattern (Child et al., 2019, figure 3c).

    With ``l = stride`` (integer ``>= 1``) and ``c = summary`` (integer, ``1 <= c <= l``)::

        A1(p) = { j <= p : j // l == p // l }      # the query's own block of l positions
        A2(p) = { j <= p : j mod l >= l - c }      # the last c positions of every block

    The paper writes ``A2`` as ``j mod l in {t, ..., l}`` with ``t = l - c``; since
    ``j mod l <= l - 1`` these are the last ``c`` positions of each block, the "summary" cells
    that later blocks read. ``factor`` is as in ``sparse.strided`` (``"a1"``, ``"a2"`` or
    ``"merged"``, the union). Always causal. (The paper's variant in which different heads read
    different summary offsets is a composition of calls on shifted inputs, not this clause.)
    Extents ``(1, 1)``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.block_sparse", op="sparse")
def block_sparse(p, j, *, layout, block_q, block_k):
    """Block-sparse layout: a boolean block mask over ``block_q x block_k`` tiles, per head.

    ``block_q`` and ``block_k`` are integers ``>= 1``; ``layout`` is a boolean array of shape
    ``(H_l, ceil(N_k / block_q), ceil(N_k / block_k))``. Tiles are over positions, so the layout
    has a row for every query block of the whole sequence even when ``N_q < N_k``::

        visible(b, h, p, j) = layout[h, p // block_q, j // block_k]

    The last row and column of tiles are partial when a block size does not divide ``N_k``; the
    layout entry governs exactly the positions that exist. A layout of another shape is a
    ``ValueError``, a non-boolean one a ``TypeError``. A query whose layout row is empty sees no
    key (``sdpa.fully_masked``). This is the layout of block-sparse kernels (Child et al., 2019;
    OpenAI's blocksparse, Triton's block-sparse attention, DeepSpeed Sparse Attention) and of a
    FlexAttention ``BlockMask`` whose tiles are all full. Extents ``(1, H_l)``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.prefix_lm", op="sparse")
def prefix_lm(p, j, *, prefix_lens):
    """Prefix LM: bidirectional inside each batch item's prefix, causal after it.

    ``prefix_lens`` is an integer array of shape ``(B,)`` with ``0 <= prefix_lens[b] <= N_k``
    (positions ``0 .. prefix_lens[b] - 1`` form the prefix)::

        visible(b, h, p, j) = j < prefix_lens[b]  or  j <= p

    A query in the prefix sees the whole prefix and nothing after it; a query after the prefix
    sees the prefix and every earlier position. ``prefix_lens[b] = 0`` is causal attention and
    ``prefix_lens[b] = N_k`` full attention. Row ``p`` depends on no key after
    ``max(p, prefix_lens[b] - 1)``. The prefix is exclusive of position ``prefix_lens[b]``.
    (Raffel et al., 2020, T5, section 3.2.1; Dong et al., 2019, UniLM.) Extents ``(B, 1)``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.document", op="sparse")
def document(p, j, *, document_ids, causal=False):
    """Document mask for packed sequences: a query sees only the keys of its own document.

    ``document_ids`` is an integer array of shape ``(N_k,)`` or ``(B, N_k)`` (the 1-D form applies
    to every batch item), ``causal`` a bool::

        visible(b, h, p, j) = doc[b, p] == doc[b, j]  [and j <= p if causal]

    Ids are arbitrary integers: they need not start at 0, be sorted or be contiguous (a
    document may span several runs), and an id that occurs nowhere is an empty document that
    changes nothing. Every query sees at least itself. For contiguous documents given as
    cumulative offsets ``cu`` (flash-attn's ``cu_seqlens``, empty documents included),
    ``doc[j]`` is ``searchsorted(cu, j, side="right") - 1``: the first token of a document
    belongs to it, not to the one before. (Sequence packing without cross-contamination:
    Krell et al., 2021; FlexAttention's document masks, Dong et al., 2024.) Extents
    ``(B_d, 1)``: 1 for the 1-D form, else ``B``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.chunked", op="sparse")
def chunked(p, j, *, chunk, causal=False):
    """Chunked local attention: a query sees the keys of its own fixed-size chunk.

    ``chunk`` is an integer ``c >= 1``, ``causal`` a bool::

        visible(b, h, p, j) = p // c == j // c  [and j <= p if causal]

    Chunks are of absolute positions (``p = i + N_k - N_q``), so a decoding step sees the same
    chunk as the full pass; the last chunk is partial when ``c`` does not divide ``N_k``. With
    ``causal=True`` this is the local attention of Llama 4's chunked layers (Meta, 2025;
    ``attention_chunk_size = 8192`` in Hugging Face transformers). It equals ``sparse.document``
    with ``doc[j] = j // c``. Extents ``(1, 1)``.

    .. versionadded:: 0.1.0
    """


@clause("sparse.cost", op="sparse")
def cost():
    """Sparse attention over a fixed budget of keys per query needs memory linear in ``N``.

    For a pattern whose number of visible keys per query is bounded independently of ``N`` —
    ``sparse.dilated``; ``sparse.longformer`` with a fixed number of global tokens (each global
    row is a full row: ``O(G * N)`` pairs); ``sparse.bigbird`` with fixed ``block``,
    ``window_blocks``, ``G`` and ``r``; ``sparse.block_sparse`` with a bounded number of tiles per
    layout row; ``sparse.document`` with bounded document lengths; ``sparse.chunked`` — ``sparse``
    MUST NOT hold an ``N_q x N_k`` array (scores, probabilities or a mask table): its peak
    additional memory grows at most linearly in ``N = N_q = N_k`` for fixed ``B``, ``H``, ``D``
    and pattern budget. The inputs (a block layout included) do not count. The suite checks
    this with the backend's own peak-memory counter (``x4`` in ``N`` must stay below ``x8``),
    deterministically, never with timings. The reference counts its work: the score elements it
    evaluates grow linearly in ``N`` for these patterns.

    The strided and fixed patterns with a fixed ``stride`` have ``Theta(N^2 / l)`` visible pairs
    (``O(N sqrt(N))`` with ``l ~ sqrt(N)``, as the paper uses them); prefix-LM attention is
    causal, hence quadratic: they are not governed by this clause.

    .. versionadded:: 0.1.0
    """
