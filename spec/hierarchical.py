"""Hierarchical and routed attention: NSA-style block selection, routing by centroids, LSH buckets.

Each variant decides, per query, which keys it attends to, and then attends to them as ``sdpa``
does (scale, softmax, GQA, natural-log LSE). Every random or learned ingredient (gates,
compression weights, centroids, rotations) is an input array, so each operation is a
deterministic function of its arguments.

Shapes: ``q`` ``(B, H_q, N_q, D_qk)``, ``k`` ``(B, H_kv, N_k, D_qk)``, ``v`` ``(B, H_kv, N_k, D_v)``,
``scale`` defaults to ``1 / sqrt(D_qk)`` (``sdpa.scale``). The discrete results (selected blocks,
clusters, buckets) are returned by their own operations and MUST be exact. A kernel computes the
quantities it ranks in finite precision, so the suite separates the values at each decision
boundary (the last block chosen and the first passed over; the winning centroid or bucket and the
runner-up) by at least twice the rounding error the tolerance policy allows for them; other ranked
values may be closer. It also makes exact ties deliberately (identical computations on identical
operands, equal in every precision), which MUST follow the stated tie rule.
"""

from attnspec.clauses import clause, operations

operations(
    nsa="nsa(q, k, v, *, gates, cmp_len, cmp_stride, sel_len, top_n, window, init_blocks=0, local_blocks=0, "
    "compress_k=None, compress_v=None, scale=None) -> out",
    nsa_select="nsa_select(q, k, *, cmp_len, cmp_stride, sel_len, top_n, init_blocks=0, local_blocks=0, "
    "compress_k=None, scale=None) -> indices",
    routed="routed(q, k, v, *, centroids, causal=None, scale=None) -> (out, lse)",
    routed_assign="routed_assign(q, k, *, centroids) -> (q_clusters, k_clusters)",
    lsh="lsh(qk, v, *, rotations, chunk_len, causal=False, scale=None) -> out",
    lsh_buckets="lsh_buckets(qk, *, rotations) -> buckets",
)


@clause("nsa.combine", op="nsa")
def nsa_combine(
    q,
    k,
    v,
    *,
    gates,
    cmp_len,
    cmp_stride,
    sel_len,
    top_n,
    window,
    init_blocks=0,
    local_blocks=0,
    compress_k=None,
    compress_v=None,
    scale=None,
):
    """Native sparse attention: three causal branches mixed by given gates (Yuan et al., 2025, Section 3).

    ``N_q <= N_k``; query ``i`` is the token at position ``t_i = i + N_k - N_q`` (bottom-right
    aligned as in ``sdpa.causal.bottom_right``: ``N_q = N_k`` is prefill, ``N_q = 1`` decodes the
    newest token). ``gates`` is ``(B, H_q, N_q, 3)``, finite, in the order (compressed, selected,
    window)::

        out[b, h, i] = gates[b, h, i, 0] * o_cmp[b, h, i]     # nsa.compress
                     + gates[b, h, i, 1] * o_slc[b, h, i]     # nsa.select, nsa.selected
                     + gates[b, h, i, 2] * o_win[b, h, i]     # nsa.window

    Each branch is ``sdpa`` over its own visible set, with the same ``scale``; a branch with no
    visible key contributes exactly 0 (``sdpa.fully_masked``). The gates are inputs (the paper
    computes them as ``sigmoid(MLP(x))``), used as given: not normalised, any finite value. The
    paper gives each branch its own key and value projections; this operation takes one ``k`` and
    ``v`` for all three (a kernel with separate projections is checked by passing the same arrays
    to each). Every branch is causal: nothing stored at a position ``> t_i`` influences row ``i``.
    NSA is not invariant under permutations of the sequence: blocks, window and causality are
    positional.

    Block parameters (the paper's ``l, d, l', n, w``; it uses 32, 16, 64, 16, 512 with one initial
    and two local blocks): ``cmp_len`` and ``cmp_stride`` for compression, ``sel_len`` and
    ``top_n`` (with ``init_blocks``, ``local_blocks``) for selection, ``window``. All are integers
    ``>= 1`` (``init_blocks``, ``local_blocks >= 0``), with the paper's conditions
    ``cmp_len % cmp_stride == 0``, ``sel_len % cmp_stride == 0``, ``cmp_len <= sel_len`` and
    ``init_blocks + local_blocks <= top_n``; other values are errors.

    .. versionadded:: 0.1.0
    """


@clause("nsa.compress", op="nsa")
def nsa_compress():
    """Compressed branch: attention over summaries of complete key/value blocks.

    With ``l = cmp_len`` and ``d = cmp_stride``, compression block ``c`` covers the tokens
    ``[c*d, c*d + l)``; the blocks are ``c = 0 .. N_c - 1`` with ``N_c = (N_k - l) // d + 1`` if
    ``N_k >= l``, else ``N_c = 0`` (only blocks that lie inside the sequence). Per batch item and KV
    head, for ``x`` in ``(k, v)`` with weights ``w = compress_k`` or ``compress_v`` and ``D`` its
    head dim::

        w None:                  x_cmp[c] = (1 / l) * sum_{r < l} x[c*d + r]       # block mean
        w of shape (l,):         x_cmp[c] = sum_{r < l} w[r] * x[c*d + r]          # position weights
        w of shape (l * D, D):   x_cmp[c] = flatten(x[c*d : c*d + l]) @ w

    ``flatten`` is token-major: element ``r * D + e`` is ``x[c*d + r, e]``. The weights are shared
    by batch items and heads. (The paper's compressor is an MLP with an intra-block position
    encoding; these are its linear forms.) Block ``c`` is visible to query ``i`` iff it is
    complete at ``t_i``: ``c*d + l - 1 <= t_i``. A block whose first tokens are visible but whose
    last is not MUST NOT be visible. Then ``o_cmp`` is ``sdpa`` of ``q`` over the visible
    ``k_cmp``, ``v_cmp`` (query heads read their KV head's summaries, ``sdpa.gqa``); a row with no
    complete block (``t_i < l - 1``) has ``o_cmp = 0``. Its softmax probabilities
    ``p_cmp[b, h, i, c]`` (0 for invisible blocks) are the input of ``nsa.select``.

    .. versionadded:: 0.1.0
    """


@clause("nsa.select", op="nsa_select")
def nsa_select(
    q, k, *, cmp_len, cmp_stride, sel_len, top_n, init_blocks=0, local_blocks=0, compress_k=None, scale=None
):
    """Block selection: the ``top_n`` selection blocks per query and KV head, by importance.

    Selection block ``j`` covers the tokens ``[j*l', (j+1)*l')``, ``l' = sel_len``, for
    ``j = 0 .. ceil(N_k / l') - 1`` (the last may be short); it is a candidate for query ``i`` iff
    ``j*l' <= t_i`` (it holds a visible token). Each compressed block's probability is shared
    among the selection blocks it overlaps, in proportion to the tokens they share, and summed over
    the query heads of the group (GQA)::

        W[c, j] = |[c*d, c*d + l) intersect [j*l', (j+1)*l')| / l
        imp[b, g, i, j] = sum over heads h with h // (H_q / H_kv) == g of sum_c W[c, j] * p_cmp[b, h, i, c]

    Forced blocks: the candidates ``j < init_blocks`` (initial) and ``J_i - local_blocks < j <= J_i``
    with ``J_i = t_i // l'`` (the block holding ``t_i`` and the ``local_blocks - 1`` before it) are
    always selected, and count toward ``top_n``. The other ``top_n - (number of forced candidates)``
    slots go to the remaining candidates in decreasing importance; equal importance is decided by
    ``nsa.select.ties``. With fewer candidates than ``top_n`` all are selected. ``indices`` is
    ``(B, H_kv, N_q, top_n)``, integer: each row lists its selected blocks in increasing order,
    then ``-1`` in the unused slots.

    Notes
    -----
    With ``l = d = l'`` this is the paper's ``p_slc = p_cmp``. For other blockings (``d`` divides
    ``l`` and ``l'``) the paper's Eq. 9 reads, literally::

        p_slc[j] = sum_{m=0}^{l'/d - 1} sum_{n=0}^{l/d - 1} p_cmp[(l'/d) j - m - n]

    Compression block ``c`` covers the strides ``c .. c + l/d - 1`` (stride ``s`` is the tokens
    ``[s*d, (s+1)*d)``) and selection block ``j`` the strides ``(l'/d) j .. (l'/d)(j+1) - 1``, so
    the blocks that overlap block ``j``, each counted once per shared stride, are::

        sum_c W[c, j] * p_cmp[c]
            = (d / l) * sum_{m=0}^{l'/d - 1} sum_{n=0}^{l/d - 1} p_cmp[(l'/d)(j+1) - 1 - m - n]

    with ``p_cmp[c] = 0`` for ``c < 0`` or ``c >= N_c``. This clause uses that form. The literal
    index is this one minus ``l'/d - 1``: it reads the blocks shifted back by ``l'/d - 1`` strides,
    ``c = (l'/d) j - (l'/d - 1) - (l/d - 1) .. (l'/d) j``, which for ``l' > d`` start mostly in block
    ``j - 1``, and misses those starting at the later strides of block ``j`` (with the paper's
    ``l, d, l' = 32, 16, 64``: ``c = 4j - 4 .. 4j`` instead of ``4j - 1 .. 4j + 3``). For ``l' = d``
    the two agree. The factor ``d / l``, positive, cannot change a ranking.

    One selection per KV head, shared by its query heads, is the paper's GQA rule: a kernel loads
    each selected block once for the whole group.

    .. versionadded:: 0.1.0
    """


@clause("nsa.select.ties", op="nsa_select")
def nsa_select_ties():
    """Selection ties go to the lower block index.

    Where candidates of equal importance compete for the last free slots of ``nsa.select``, the
    lower block indices are selected, in ``nsa_select`` and in the selected branch of ``nsa``. Exact
    ties arise for instance with ``q = 0``, where every complete compressed block is equally
    probable. This is stricter than ``torch.topk`` or the bitonic top-k of fla's NSA kernels,
    which leave the order of equal values unspecified: a kernel that uses an unordered top-k may
    not claim this clause.

    .. versionadded:: 0.1.0
    """


@clause("nsa.selected", op="nsa")
def nsa_selected():
    """Selected branch: attention over the tokens of the selected blocks, shared by a GQA group.

    With ``S(b, g, i)`` the blocks ``nsa.select`` chooses, query head ``h`` of KV head ``g``
    attends to ``{j : j // l' in S(b, g, i) and j <= t_i}``: every query head of a group sees the
    same tokens (not a top-n of its own), and tokens of a selected block that lie after ``t_i``
    are invisible. The set is never empty. When ``top_n`` is at least the number of selection
    blocks, every candidate is selected and ``o_slc`` is ``sdpa(q, k, v, causal="bottom_right")``.

    .. versionadded:: 0.1.0
    """


@clause("nsa.window", op="nsa")
def nsa_window():
    """Sliding-window branch: attention over the ``window`` most recent keys.

    ``o_win`` attends to the keys ``t_i - w < j <= t_i``, ``w = window``: it is
    ``sdpa(q, k, v, causal="bottom_right", window=(w - 1, 0))``, exactly ``w`` keys where all
    exist. ``w >= N_k`` gives causal dense attention.

    .. versionadded:: 0.1.0
    """


@clause("routed.assign", op="routed_assign")
def routed_assign(q, k, *, centroids):
    """Cluster assignment by the nearest unit centroid (Roy et al., 2021, "Routing Transformers").

    ``centroids`` is ``(H_q, C, D_qk)``, ``C >= 1``, rows nonzero (the paper learns them by
    online k-means; here they are given). For query head ``h`` with KV head ``g``::

        assign_h(x) = argmax_c dot(x / |x|, centroids[h, c] / |centroids[h, c]|)
        q_clusters[b, h, i] = assign_h(q[b, h, i])         # (B, H_q, N_q)
        k_clusters[b, h, j] = assign_h(k[b, g, j])         # (B, H_q, N_k)

    This is the nearest centroid in Euclidean distance between unit vectors. The centroids MUST
    be normalised (without it, long centroids win); normalising ``x`` cannot change the argmax and
    only matters numerically; a zero ``x`` has every dot 0. Ties: the lowest centroid index.
    Keys are assigned once per query head because centroids are per query head: heads that share
    a routing have equal centroid rows. Implementations that balance the clusters by giving each
    centroid a fixed number of nearest tokens compute another operation, not this one.

    .. versionadded:: 0.1.0
    """


@clause("routed", op="routed")
def routed(q, k, v, *, centroids, causal=None, scale=None):
    """Routed attention: a query attends to the keys of its own cluster.

    With the clusters of ``routed.assign``, ``V(i) = {j : k_clusters[b, h, j] == q_clusters[b, h, i]}``
    intersected with the causal rule (``causal`` None, ``"top_left"`` or ``"bottom_right"`` as in
    ``sdpa.causal.*``). Then ``(out, lse) = sdpa(q, k, v, scale=scale, causal=causal, mask=V)``;
    every rule of ``sdpa`` applies. A row whose cluster holds no visible key follows
    ``sdpa.fully_masked``: ``out`` exactly 0, ``lse = -inf``. Returns ``(out, lse)``.
    A token's cluster depends on that token alone, so: with ``C = 1`` this is ``sdpa``; without
    causality, permuting keys and values jointly changes nothing and permuting the queries
    permutes the rows; with causality it is strictly causal: nothing stored at a later key changes
    a row. A value stored at any key a row cannot see leaves that row unchanged (that key's ``k``
    may not: it decides the key's cluster).

    .. versionadded:: 0.1.0
    """


@clause("lsh.buckets", op="lsh_buckets")
def lsh_buckets(qk, *, rotations):
    """Angular LSH buckets (Kitaev et al., 2020, "Reformer", Section 2).

    ``qk`` is ``(B, H, N, D)``: shared query/key vectors. ``rotations`` is ``(R, D, n_buckets / 2)``,
    one random matrix per hash round (the paper fixes a random matrix; here it is given), shared by
    batch items and heads, ``n_buckets`` even. For round ``r``::

        y = qk[b, h, i] @ rotations[r]                        # (n_buckets / 2,)
        buckets[b, h, r, i] = argmax(concatenate([y, -y]))     # index n_buckets/2 + u is -y[u]

    Ties: the lowest index (a zero vector is in bucket 0). A positive rescaling of ``qk`` cannot
    change the bucket, so hashing ``qk`` or the unit keys of ``lsh.chunks`` is the same.
    ``buckets`` is ``(B, H, R, N)``, integer.

    .. versionadded:: 0.1.0
    """


@clause("lsh.chunks", op="lsh")
def lsh_chunks(qk, v, *, rotations, chunk_len, causal=False, scale=None):
    """LSH attention: sort by bucket, cut into chunks, attend within the chunk and the one before.

    Shared-QK: the keys are the unit vectors ``k[j] = qk[j] / |qk[j]|`` (0 for a zero vector), the
    queries are ``qk`` itself, ``s(i, j) = scale * dot(qk[i], k[j])``; ``v`` is ``(B, H, N, D_v)``.
    (Implementations that do not scale unit keys correspond to ``scale=1.0``.) In round ``r``
    the positions are sorted stably by bucket (ties: by position); ``rank_r(j)`` is ``j``'s place
    in that order and ``chunk_r(j) = rank_r(j) // chunk_len``. Query ``i`` may attend to::

        P_r(i) = {j : bucket_r(j) == bucket_r(i), chunk_r(i) - 1 <= chunk_r(j) <= chunk_r(i),
                  and j <= i if causal}

    its own chunk and the previous one, restricted to its own bucket (the paper's chunked
    ``P_i``). Chunk 0 has no previous chunk: no wrap-around. ``causal`` is a bool (this is
    self-attention, where the two causal alignments agree). The self key ``i`` is in ``P_r(i)``;
    ``lsh.self_exclusion`` removes it, ``lsh.rounds`` combines the rounds. Hugging Face's
    ``LSHSelfAttention`` (Reformer) attends to every key of the two chunks whatever its bucket,
    and lets chunk 0 see the last chunk; it does not conform.

    ``chunk_len`` MUST divide ``N``; other values are errors (ValueError naming ``chunk_len`` and
    ``N``). Trax and reformer-pytorch sort the ``R`` rounds as one sequence of ``R * N`` positions
    (buckets offset by round) and cut that into chunks, so the previous chunk of a round's first
    chunk is the last chunk of the round before (of the last round, for round 0), whose keys are
    in other buckets and hidden by the bucket rule. Their chunks are this clause's per-round
    chunks exactly when ``chunk_len`` divides ``N``; otherwise a chunk straddles two rounds
    (reformer-pytorch asserts that ``N`` is a multiple of twice its chunk length).

    Causal means no row reads a later position's value. Which earlier keys share ``i``'s chunks
    depends on the buckets of all tokens, later ones included (they move chunk boundaries), so
    changing a later ``qk`` MAY change an earlier row, unlike ``sdpa``. With one chunk
    (``chunk_len = N``) and no causality, permuting the sequence permutes the output rows;
    with several chunks it does not (the order decides ties in the sort, and the boundaries).

    .. versionadded:: 0.1.0
    """


@clause("lsh.self_exclusion", op="lsh")
def lsh_self_exclusion():
    """Shared-QK self-exclusion: a token attends to itself only if no round gives it another key.

    ``O_r(i) = P_r(i) minus {i}``. If ``O_r(i)`` is nonempty for some round ``r``, the self key
    carries no weight in any round and the rounds combine over the ``O_r`` (``lsh.rounds``). If
    ``O_r(i)`` is empty in every round, ``out[i] = v[i]``. The paper replaces the self score by a
    large negative number (``dot(qk_i, k_i) = |qk_i|`` is almost always the largest score); this is
    that rule's limit: a round where ``i`` sees only itself then weighs ``exp(-1e5)`` against a
    round where it sees another key. A kernel MUST NOT give the self key
    its true score where it is alone in a round while another round gives ``i`` other keys.

    .. versionadded:: 0.1.0
    """


@clause("lsh.rounds", op="lsh")
def lsh_rounds():
    """Hash rounds: attention over the union of the rounds' visible sets, each key counted once.

    With ``U(i) = O_1(i) union ... union O_R(i)``, ``out[i]`` is ``sdpa`` of ``qk[i]`` over the keys
    of ``U(i)`` (``v[i]`` if ``U(i)`` is empty, ``lsh.self_exclusion``): a key visible in several
    rounds carries the weight of one key. This is the Reformer paper's rule (Appendix A), which a
    kernel computes round by round: with ``N_ij`` the number of rounds with ``j`` in ``O_r(i)``,
    round ``r`` gives ``(o_r, z_r)``, attention over ``O_r(i)`` with the additive bias
    ``-log N_ij`` (``o_r = 0`` and ``z_r = -inf`` if ``O_r(i)`` is empty); then
    ``z = log(sum_r exp(z_r))`` and ``out = sum_r exp(z_r - z) * o_r`` (the merge of
    ``flash.merge``). The ``N_ij`` copies of a key's term sum to one term, so the two forms are
    equal. Trax's ``LSHCausalAttention`` does the same by default (``allow_duplicate_attention=False``).
    Hugging Face's Reformer, and reformer-pytorch by default, merge the rounds without the
    ``-log N_ij``: a key counts ``N_ij`` times (``sdpa`` over ``U(i)`` with the bias ``+log N_ij``);
    that does not conform. Averaging the rounds' outputs does not either, unless their ``z_r``
    are equal.

    The weights ``exp(z_r - z)`` MUST sum to one to working precision, also where every round
    holds only the self key: with a finite self penalty (``-1e5``), computing ``z`` in float32 and
    then ``exp(z_r - z)`` loses ``ulp(1e5)``, about ``0.008``, and scales such a row by up to about
    0.4%; subtracting ``max_r z_r`` and normalising the weights does not. The suite's floor is
    ``2 eps(dtype) max|v|``, so it detects this error at float32, at float16 only in rows where
    ``|v[i]|`` is near ``max|v|`` (floor 0.2%), and not at bfloat16 (floor about 1.6%). ``out`` is
    ``(B, H, N, D_v)``.

    .. versionadded:: 0.1.0
    """
