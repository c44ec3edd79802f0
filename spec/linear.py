"""Linear attention: kernel feature maps, the efficient-attention form, Performer (FAVOR+).

Shapes: ``q`` is ``(B, H, N_q, D_qk)``, ``k`` is ``(B, H, N_k, D_qk)``, ``v`` is ``(B, H, N_k, D_v)``
(the same head count for all three), ``N_q, N_k, D_qk, D_v >= 1``; outputs are
``(B, H, N_q, D_v)``. ``phi`` is a feature map applied to each row of ``q`` and ``k``; ``F`` is its
width (``F = D_qk`` for the element-wise maps of ``linear.feature_map``, ``F = m`` for Performer).
Query ``i`` and key ``j`` are 0-based positions. Every operation is a deterministic function of its
arguments: random projections are inputs, never drawn inside an operation.
"""

from attnspec.clauses import clause, operations

operations(
    linear_attention="linear_attention(q, k, v, *, feature_map='elu+1', causal=False, form='parallel', "
    "chunk_size=None, normalize=True, scale=1.0, eps=0.0, initial_state=None, "
    "initial_normalizer=None, output_final_state=False) -> out or (out, state, normalizer)",
    efficient_attention="efficient_attention(q, k, v) -> out",
    performer_features="performer_features(x, projection) -> features",
    orthogonal_projection="orthogonal_projection(gaussian_blocks, norms) -> projection",
    performer="performer(q, k, v, *, projection, causal=False, scale=None) -> out",
)


@clause("linear.parallel", op="linear_attention")
def parallel(
    q,
    k,
    v,
    *,
    feature_map="elu+1",
    causal=False,
    form="parallel",
    chunk_size=None,
    normalize=True,
    scale=1.0,
    eps=0.0,
    initial_state=None,
    initial_normalizer=None,
    output_final_state=False,
):
    """Kernelised linear attention, and its defining parallel form (Katharopoulos et al., 2020).

    With ``f_q[i] = scale * phi(q_i)`` and ``f_k[j] = phi(k_j)`` (rows of width ``F``), ``V(i)`` the
    keys visible to query ``i`` (all keys, or ``j <= i`` under ``linear.causal``), ``S0`` the
    ``initial_state`` ``(B, H, F, D_v)`` and ``z0`` the ``initial_normalizer`` ``(B, H, F)`` (zeros when
    not given, clause ``linear.state``)::

        S_i = S0 + sum over j in V(i) of outer(f_k[j], v_j)        # (F, D_v)
        z_i = z0 + sum over j in V(i) of f_k[j]                     # (F,)
        num_i = f_q[i] @ S_i        den_i = dot(f_q[i], z_i)
        out_i = num_i / (den_i + eps)   if normalize   (rule of linear.normalizer)
        out_i = num_i                   otherwise

    ``form="parallel"`` evaluates this as the masked quadratic product: ``A = f_q f_k^T`` ``(N_q, N_k)``,
    ``A`` set to 0 where a key is not visible (``M``), ``num = (A * M) v + f_q S0`` and
    ``den = rowsum(A * M) + f_q z0``. The forms ``"recurrent"`` (``linear.recurrent``) and ``"chunked"``
    (``linear.chunked``) are other evaluation orders of the same sums; all three MUST give this
    result within the tolerance policy. ``chunk_size`` is an integer ``>= 1`` for ``"chunked"`` and
    MUST be ``None`` otherwise.

    ``scale`` (finite, ``> 0``, default 1) multiplies the query features, not ``q`` before ``phi``:
    under normalisation with ``eps = 0`` it cancels; kernels such as flash-linear-attention default
    it to ``D_qk ** -0.5``, so callers that want that pass it. Keys are never scaled. ``out`` has the
    input dtype; with ``output_final_state=True`` the result is ``(out, S, z)``, the sums over all
    keys (``linear.state``), which MAY be float32 for 16-bit inputs. The time and memory of the
    parallel form are quadratic in ``N``; those of the other forms are linear (``linear.cost``).

    .. versionadded:: 0.1.0
    """


@clause("linear.feature_map", op="linear_attention")
def feature_map(x, name):
    """The named feature maps, applied element-wise to every row of ``q`` and ``k`` (``F = D_qk``).

    - ``"elu+1"``: ``phi(x) = x + 1`` for ``x > 0`` and ``exp(x)`` for ``x <= 0``, which is
      ``elu(x) + 1`` with ``elu``'s ``alpha = 1`` (Katharopoulos et al., 2020). Always ``> 0``. Written
      as ``(exp(x) - 1) + 1`` it loses all relative accuracy below about ``x = -17`` in float32;
      an implementation SHOULD evaluate ``exp(x)`` there.
    - ``"relu"``: ``phi(x) = max(x, 0)``. Non-negative; a row with no positive entry maps to 0.
    - ``"identity"``: ``phi(x) = x``. Signed: only allowed with ``normalize=False``
      (``linear.normalizer``); this is unnormalised linear attention, ``(Q K^T * M) V``.

    The default is ``"elu+1"``. Any other name is an error.

    .. versionadded:: 0.1.0
    """


@clause("linear.normalizer", op="linear_attention")
def normalizer(num, den, eps=0.0):
    """Normalisation: ``out_i = num_i / (den_i + eps)``, and exactly 0 where ``den_i + eps = 0``.

    With ``normalize=True`` the feature map MUST be non-negative (``"elu+1"`` or ``"relu"``) and
    ``initial_normalizer`` MUST be ``>= 0`` element-wise; ``"identity"`` with ``normalize=True`` is
    an error, because its denominator takes either sign and passes through zero, where the output
    is unbounded. Then ``den_i >= 0``, a sum of non-negative terms (no cancellation), and the only
    degenerate case is ``den_i + eps = 0``: every visible ``dot(f_q[i], f_k[j])`` and
    ``dot(f_q[i], z0)`` is zero, as happens with ``"relu"`` when a query row has no positive entry
    or shares no positive channel with any visible key. Such a row MUST be ``+0.0`` or ``-0.0`` in
    every element (the limit ``eps -> 0+`` of the formula; never NaN), whatever ``num_i`` holds.

    ``eps`` is a finite number ``>= 0`` added to the denominator, default 0. It is part of the
    definition, not a tolerance: fast-transformers adds ``1e-6``, and flash-linear-attention has
    used ``1e-5`` and ``1e-10`` in its releases; a kernel that adds one when ``eps = 0`` is asked
    for is off by ``eps / den`` relative, and conforms only where that is within the tolerance
    policy. With ``normalize=False``, ``eps`` has no effect.

    .. versionadded:: 0.1.0
    """


@clause("linear.causal", op="linear_attention")
def causal(i, j):
    """Causal linear attention: query ``i`` sees keys ``j <= i``, and ``N_q`` MUST equal ``N_k``.

    ``causal=True`` gives ``S_i = S0 + sum_{j <= i} outer(f_k[j], v_j)``, the prefix sum of
    Katharopoulos et al.'s autoregressive form, with the diagonal ``j = i`` included. Causal calls
    with ``N_q != N_k`` are errors: tokens before the current block are carried by
    ``initial_state`` and ``initial_normalizer`` (``linear.state``), not by an offset. Keys after ``i``
    MUST NOT influence row ``i`` in any form: a finite value stored there, however large (``1e4``),
    leaves the row unchanged. ``causal`` is a bool.

    .. versionadded:: 0.1.0
    """


@clause("linear.recurrent", op="linear_attention")
def recurrent():
    """Recurrent form: one state update per token, the RNN view of Katharopoulos et al. (2020).

    ``form="recurrent"``. The state ``(S, z)`` starts at ``(S0, z0)``. Causal: for ``t = 0 .. N-1``,
    first ``S += outer(f_k[t], v_t)`` and ``z += f_k[t]``, then ``num_t = f_q[t] @ S`` and
    ``den_t = dot(f_q[t], z)``: the update comes before the read, so token ``t`` sees itself.
    Non-causal: every key is added to the state, then every query reads it. The result MUST equal
    ``linear.parallel`` within the tolerance policy.

    .. versionadded:: 0.1.0
    """


@clause("linear.chunked", op="linear_attention")
def chunked(chunk_size):
    """Chunked form: quadratic within a chunk, the state between chunks (Hua et al., 2022; Yang et al., 2024).

    ``form="chunked"`` with ``C = chunk_size >= 1``. The tokens ``0 .. N-1`` are cut into
    ``ceil(N / C)`` contiguous chunks of ``C`` (the last MAY be shorter). Causal, for each chunk
    ``c`` in order, with ``(S, z)`` the state after the previous chunks (``(S0, z0)`` before the first)::

        A_c   = tril(f_q[c] f_k[c]^T)            # intra-chunk, diagonal included
        num_c = f_q[c] @ S + A_c @ v[c]          den_c = f_q[c] @ z + rowsum(A_c)
        S += f_k[c]^T v[c]                       z += colsum(f_k[c])

    Non-causal: the chunks of keys are added to the state in turn, then every query reads it.
    For every ``C >= 1``, ``C`` dividing ``N`` or not, ``C = 1`` and ``C >= N`` included, the
    result MUST equal ``linear.parallel`` within the tolerance policy.

    .. versionadded:: 0.1.0
    """


@clause("linear.state", op="linear_attention")
def state(initial_state=None, initial_normalizer=None, output_final_state=False):
    """Initial and final state: a sequence processed in pieces equals the sequence processed whole.

    ``initial_state`` ``S0`` ``(B, H, F, D_v)`` and ``initial_normalizer`` ``z0`` ``(B, H, F)`` are the
    sums carried in from earlier tokens; either MAY be ``None`` (zeros). Both are finite; ``z0``
    is ``>= 0`` when ``normalize=True``. With ``output_final_state=True`` the operation returns
    ``(out, S, z)``: ``S = S0 + sum over all keys of outer(f_k[j], v_j)`` and
    ``z = z0 + sum over all keys of f_k[j]``, the same in every form and whether or not ``causal``
    or ``normalize`` is set. Hence, causally, running tokens ``[0, t)`` and then ``[t, N)`` with the
    first call's ``(S, z)`` as the second's ``(S0, z0)`` MUST reproduce the single call's rows.
    (flash-linear-attention before 0.6 carried ``S`` only and normalised by the current block's
    keys, conforming to this clause only with ``normalize=False``; 0.6 carries ``(S, z)``.)

    .. versionadded:: 0.1.0
    """


@clause("linear.cost", op="linear_attention")
def cost():
    """The recurrent and chunked forms need memory linear in the sequence length.

    Besides its inputs and outputs, ``form="recurrent"`` and ``form="chunked"`` (``C`` fixed) MUST
    NOT hold an ``N_q x N_k`` array nor one state per token (``N x F x D_v``): their peak
    additional memory is ``O(N (D_qk + D_v) + F D_v + C^2)`` per ``(b, h)``, so it grows at most
    linearly in ``N`` at fixed head dims, and at most linearly in ``D = D_qk = D_v`` at fixed
    ``N >= D``. (Keeping one state per chunk for the backward pass, ``N / C`` states, stays
    within this for ``C >= F``.) The parallel form is quadratic by definition and is exempt.
    The suite checks this with the backend's peak-memory counter, never with timings.

    .. versionadded:: 0.1.0
    """


@clause("linear.efficient", op="efficient_attention")
def efficient(q, k, v):
    """Efficient attention with softmax normalisation (Shen et al., 2021), non-causal.

    ``rho_q(q)`` is the softmax of each query row over its ``D_qk`` features; ``rho_k(k)`` is the
    softmax of each key feature column over the ``N_k`` keys (over the sequence axis, not the
    features)::

        rho_q[i, d] = exp(q[i, d]) / sum_e exp(q[i, e])
        rho_k[j, d] = exp(k[j, d]) / sum_l exp(k[l, d])
        out = rho_q(q) @ (rho_k(k)^T @ v)              # (N_q, D_v), through a (D_qk, D_v) context

    No scale is applied. Both softmaxes MUST subtract their maximum (or an equivalent) so that
    finite inputs never overflow. Every output row is a convex combination of value rows, so
    ``|out| <= max |v|``. ``N_q`` MAY differ from ``N_k``.

    .. versionadded:: 0.1.0
    """


@clause("performer.features", op="performer_features")
def performer_features(x, projection):
    """Positive random features for the softmax kernel (Choromanski et al., 2021, FAVOR+).

    ``x`` is ``(..., D)``, ``projection`` ``W`` is ``(m, D)`` with ``m >= 1`` rows ``w_f``; the result
    is ``(..., m)``::

        phi(x)[f] = exp(dot(w_f, x) - |x|^2 / 2) / sqrt(m)

    so that ``E[dot(phi(x), phi(y))] = exp(dot(x, y))`` when the rows of ``W`` are
    ``N(0, I_D)`` (``performer.estimator``). The operation returns these exact values, without
    a stabiliser and without an additive ``eps``: the paper's JAX code (google-research
    ``fast_attention``) adds its ``numerical_stabilizer`` to every stabilised feature, ``1e-6`` by
    default, and performer-pytorch adds ``1e-4``, which biases the estimate. ``x`` is used as
    given: the ``D ** -1/4`` scaling of queries and keys belongs to ``performer``.

    .. versionadded:: 0.1.0
    """


@clause("performer.orthogonal", op="orthogonal_projection")
def performer_orthogonal(gaussian_blocks, norms):
    """Orthogonal random features from given Gaussian blocks and row norms (Yu et al., 2016).

    ``norms`` is ``(m,)``, finite and ``>= 0`` (drawn from ``chi(D)`` in the paper, so that each row
    is marginally ``N(0, I_D)``; ``sqrt(D)`` for the "regularised" variant). ``gaussian_blocks`` is
    ``(ceil(m / D), D, D)``, each block non-singular (see below). For block ``b`` let
    ``G_b = Q_b R_b`` be its QR factorisation with the diagonal of ``R_b`` made positive (flip the
    sign of column ``c`` of ``Q_b`` and row ``c`` of ``R_b`` where ``R_b[c, c] < 0``; this makes
    ``Q_b`` unique and, for Gaussian ``G_b``, Haar-distributed, Mezzadri 2007). Row ``b * D + c``
    of the stacked matrix is column ``c`` of ``Q_b`` (the rows of ``Q_b^T``); the result keeps the
    first ``m`` rows and multiplies row ``r`` by ``norms[r]``::

        W[b * D + c, :] = norms[b * D + c] * Q_b[:, c]

    Rows of one block are therefore mutually orthogonal: ``W_b W_b^T = diag(norms_b^2)``; rows
    of different blocks are independent.

    A block is singular, and an error (``ValueError``), when some ``|R_b[c, c]| <= D * eps *
    max |R_b|`` with ``eps = 2 ** -52`` (float64, in which the reference factors the given values):
    Householder QR is backward stable to about that level, so such an ``R_b[c, c]`` may be a rounded
    zero and column ``c`` of ``Q_b`` is then fixed by rounding alone. An exactly rank-deficient block,
    such as a rank-1 outer product, is singular by this rule.

    Note: performer-pytorch and google-research's ``performer`` code take ``Q_b`` from the QR
    factorisation without the sign fix, so their rows differ from these in sign wherever
    ``R_b[c, c] < 0``, and their ``Q_b`` is not Haar-distributed; they are not conforming.

    .. versionadded:: 0.1.0
    """


@clause("performer", op="performer")
def performer(q, k, v, *, projection, causal=False, scale=None):
    """Performer attention (FAVOR+): normalised linear attention with positive random features.

    With ``scale`` (default ``1 / sqrt(D_qk)``, finite and ``> 0``), ``q' = q * sqrt(scale)`` and
    ``k' = k * sqrt(scale)`` (``D ** -1/4`` each by default, the scale split evenly: putting all of it
    on ``q`` gives the same kernel in expectation but another estimate for a given ``W``), and
    ``phi`` of ``performer.features`` with ``projection`` ``(m, D_qk)``, the output is
    ``linear.parallel`` with ``f_q = phi(q')``, ``f_k = phi(k')``, ``normalize=True``, ``eps = 0``, no
    initial state, non-causal or causal (``linear.causal``: ``j <= i``, ``N_q = N_k``). It
    estimates ``sdpa`` with the same ``scale``.

    The features MUST NOT overflow for finite inputs. An implementation MAY subtract from the
    logits ``dot(w_f, x') - |x'|^2 / 2`` a constant per query row, and from the key logits a
    constant per ``(b, h)`` when non-causal; in the causal form, for row ``i``, a constant common
    to the keys ``j <= i`` and computed from them only, such as their running maximum ``c_i``
    (key ``j`` then enters row ``i`` with weight ``exp(c_j - c_i) <= 1``, and the carried sums are
    rescaled when ``c`` grows, as online softmax rescales). These shifts cancel in real arithmetic
    and MUST NOT change the result beyond the tolerance policy. In the causal form row ``i`` MUST
    NOT depend on keys after ``i`` (``1e4`` stored there leaves it unchanged). A key shift over
    all keys is not causal: with key 0 stretched to ``|k_0'|^2 / 2 = 1000`` (about 20 times the
    typical norm at ``D_qk = 16``), its logits lie near ``-1000``, far below later keys', and their
    maximum underflows every feature of key 0, so row 0, which sees key 0 alone and equals
    ``v_0``, becomes 0. The maximum of the projections ``dot(w_f, k')`` over all keys (the paper's
    code) fails in the same way when a future key is large. A row whose denominator underflows to
    0 even so follows ``linear.normalizer``.

    .. versionadded:: 0.1.0
    """


@clause("performer.estimator", op="performer")
def performer_estimator():
    """FAVOR+ is an unbiased estimator of the softmax kernel whose attention error falls as ``m`` grows.

    For projections with i.i.d. ``N(0, I_D)`` rows (or orthogonal rows, ``performer.orthogonal``,
    with ``chi(D)`` norms), ``dot(phi(x), phi(y))`` of ``performer.features`` has mean
    ``exp(dot(x, y))``, and ``performer`` converges to ``sdpa`` with error ``O(1 / sqrt(m))``
    (Choromanski et al., 2021: the positive random features and their variance analysis). An
    implementation MUST use every row of the projection it is given: the mean, over independent
    projections, of its feature products MUST be statistically indistinguishable from
    ``exp(dot(x, y))``, and its mean absolute error against ``sdpa`` MUST fall with ``m`` at about
    the rate ``m ** -1/2`` (a factor 2 per x4 in ``m``) up to ``m = 1024`` at least: a kernel that
    keeps one tile of features stops falling at the tile's width. The suite checks both with fixed
    seeds and states each check's false-failure probability.

    .. versionadded:: 0.1.0
    """
