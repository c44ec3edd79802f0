"""Retention (RetNet): parallel, recurrent and chunkwise forms with per-head decays.

Sun et al., "Retentive Network: A Successor to Transformer for Large Language Models" (2023),
section 2. Shapes: ``q`` and ``k`` are ``(B, H, N, D_k)``, ``v`` is ``(B, H, N, D_v)``,
``gammas`` is ``(H,)`` (float32 or float64, whatever the dtype of ``q``, ``k``, ``v``), a state
is ``(B, H, D_k, D_v)``; the output is ``(B, H, N, D_v)``.
Positions ``n`` and ``m`` are 0-based. Every head ``h`` uses its own decay ``gammas[h]``.

The clauses govern retention itself. The rest of a RetNet layer is outside them: the xPos
rotation of ``q`` and ``k`` (a rotation applied before the call, like RoPE), the score
normalisations of section 2.3 (dividing ``D`` by the square root of its row sums, dividing
``Q K^T * D`` by ``max(|row sum|, 1)``, torchscale's running scale in the recurrent form: each is
a positive rescaling of an output row, which the per-head GroupNorm that follows cancels up to
its ``eps``: GroupNorm divides by ``sqrt(var + eps)``, so a row rescaled by ``c`` comes out
multiplied by ``c sqrt(var + eps) / sqrt(c^2 var + eps)``, 1 only when ``eps`` is negligible
beside ``var`` and ``c^2 var``), the GroupNorm, the swish gate and the output projection.
"""

from attnspec.clauses import clause, operations

operations(
    retention="retention(q, k, v, *, gammas, form='parallel', chunk_size=None, scale=None, "
    "initial_state=None, return_state=False) -> out or (out, state)",
    retention_decays="retention_decays(num_heads) -> gammas",
)


@clause("retention.parallel", op="retention")
def parallel(q, k, v, *, gammas, scale=None, initial_state=None):
    """Retention, parallel form: ``out = ((scale Q K^T) * D) V``, ``D[n, m] = gamma^(n - m)`` for ``m <= n``, else 0.

    For every batch item ``b``, head ``h`` (``g = gammas[h]``) and position ``n``::

        out[b, h, n, :] = sum over m <= n of g^(n - m) * scale * dot(q[b, h, n], k[b, h, m]) * v[b, h, m, :]
                        + g^(n + 1) * scale * q[b, h, n] @ S0[b, h]

    where ``S0`` is ``initial_state`` (zeros when ``None``; clause ``retention.state``). This is
    equation (5) of the paper (with ``Q`` and ``K`` already rotated) plus the initial state.

    - ``scale`` multiplies the dot product; ``None`` means ``1 / sqrt(D_k)``. A kernel MAY fold it
      into ``q`` (flash-linear-attention) or ``k`` (torchscale's ``k *= scaling``): the value is
      the same in exact arithmetic, and the tolerance admits the extra rounding of ``q * scale``
      or ``k * scale`` stored in a 16-bit dtype. There is no softmax and no normaliser.
    - ``gammas`` holds one decay per head with ``0 <= gammas[h] <= 1``; other values are errors.
      It is a float32 or float64 array whatever the dtype of ``q``, ``k`` and ``v``; another
      dtype is a ``TypeError``. Decays are host values: like ALiBi slopes they reach a backend
      (through ``to_native``) in their own dtype, float32 with 16- and 32-bit inputs and float64
      with float64 ones in the suite. A kernel MUST use the values as
      given, at least in float32: rounded to bfloat16 every decay from ``1 - 2^-9`` up becomes 1
      (the paper's heads 4 and above stop decaying), rounded to float16 every decay from
      ``1 - 2^-12`` up (heads 7 and above).
      ``g^0 = 1`` also for ``g = 0``, so ``g = 0`` gives ``out[n] = scale * dot(q_n, k_n) * v_n``
      (and the initial state never contributes); ``g = 1`` is causal linear attention without a
      normaliser, ``out[n] = scale * sum over m <= n of dot(q_n, k_m) * v_m``.
    - The decay MUST be evaluated so that it underflows gracefully: ``g^(n - m)`` for large
      ``n - m`` (or small ``g``) is a tiny number or zero, never NaN or infinity. Computing it as
      ``g^n * g^(-m)`` (scaling ``q`` by ``g^n`` and ``k`` by ``g^(-m)``) overflows for long
      runs or small ``g`` and does not conform. The reference uses ``exp((n - m) * log g)``,
      masked to ``m <= n``.
    - Causal: ``out[n]`` MUST NOT depend on ``q``, ``k`` or ``v`` at positions after ``n``; a
      finite value stored there (``1e4``) leaves ``out[n]`` unchanged.
    - ``N = 0`` is allowed (an empty output).
    - Accuracy follows the tolerance policy (:mod:`attnspec.tolerance`), the naive error being
      that of the form under test evaluated in the dtype (float32 accumulation, state in float32).

    .. versionadded:: 0.1.0
    """


@clause("retention.recurrent", op="retention")
def recurrent(q, k, v, *, gammas, scale=None, initial_state=None):
    """Recurrent form (``form="recurrent"``): ``S_n = g S_(n-1) + k_n^T v_n``, ``out[n] = scale * q_n S_n``.

    With ``S_(-1) = S0`` (``initial_state``, zeros when ``None``) and ``g = gammas[h]``, for
    ``n = 0 .. N-1``, per batch item and head::

        S_n = g * S_(n-1) + outer(k[b, h, n], v[b, h, n])     # (D_k, D_v)
        out[b, h, n, :] = scale * q[b, h, n] @ S_n

    This is equation (6) of the paper. The state is updated before it is read: ``out[n]``
    includes position ``n``'s own key and value. The result MUST equal ``retention.parallel``
    within the tolerance policy. Besides its inputs and outputs it needs the ``D_k x D_v`` state
    per batch item and head (clause ``retention.cost``).

    .. versionadded:: 0.1.0
    """


@clause("retention.chunkwise", op="retention")
def chunkwise(q, k, v, *, gammas, chunk_size, scale=None, initial_state=None):
    """Chunkwise recurrent form (``form="chunkwise"``): parallel inside a chunk, recurrent across chunks.

    ``chunk_size`` is an integer ``>= 1`` (an error for the other forms, which take ``None``).
    Chunk ``c`` holds positions ``c * chunk_size`` to ``min((c + 1) * chunk_size, N) - 1``; its
    length ``L_c`` equals ``chunk_size`` except possibly for the last chunk, and any
    ``chunk_size`` is allowed, also one that does not divide ``N`` or exceeds it. With
    ``R_(-1) = S0`` and local positions ``r, s = 0 .. L_c - 1`` of chunk ``c``::

        out[c, r] = sum over s <= r of g^(r - s) * scale * dot(q_r, k_s) * v_s     # inner-chunk
                  + g^(r + 1) * scale * q_r @ R_(c-1)                              # cross-chunk
        R_c = g^(L_c) * R_(c-1) + sum over s of g^(L_c - 1 - s) * outer(k_s, v_s)

    This is equation (7) of the paper with the exponents taken from each chunk's actual length.
    ``R_c`` equals the recurrent state ``S_n`` at the chunk's last position. For every
    ``chunk_size`` the result MUST equal ``retention.parallel`` within the tolerance policy
    (``chunk_size >= N`` is the parallel form; ``chunk_size = 1`` the recurrent form). Forgetting
    the ``g^(L_c)`` decay of the carried state, or computing a partial last chunk with the full
    chunk's exponents, does not conform.

    .. versionadded:: 0.1.0
    """


@clause("retention.state", op="retention")
def state(q, k, v, *, gammas, initial_state=None, return_state=False):
    """Initial and final state: ``S0`` enters at position ``-1``; the final state is ``S_(N-1)``.

    ``initial_state`` is ``None`` or an array ``(B, H, D_k, D_v)``: the state before position 0,
    so that it reaches ``out[n]`` decayed by ``g^(n + 1)`` (clause ``retention.parallel``). With
    ``return_state=True`` every form returns ``(out, state)``, ``state`` being::

        S_(N-1) = g^N * S0 + sum over m of g^(N - 1 - m) * outer(k[b, h, m], v[b, h, m])

    of shape ``(B, H, D_k, D_v)``; for ``N = 0`` it is ``S0`` itself. The state holds
    unscaled key-value products (``scale`` applies to the query side only), as
    flash-linear-attention's ``initial_state``/``final_state`` do. Hence processing a sequence
    in two parts, passing the first part's state to the second, MUST reproduce a single pass:
    the outputs concatenate and the second part's state is the whole sequence's. The state MAY
    be float32 for 16-bit inputs.

    .. versionadded:: 0.1.0
    """


@clause("retention.multiscale", op="retention_decays")
def multiscale(num_heads):
    """The paper's per-head decays: ``gammas[h] = 1 - 2^(-5 - h)`` for ``h = 0 .. num_heads - 1``.

    Multi-scale retention (section 2.2 of the paper: ``gamma = 1 - 2^(-5 - arange(0, h))``)
    gives head 0 the fastest decay (``31/32``) and each further head half the distance to 1:
    ``0.96875, 0.984375, 0.9921875, ...``. The decays do not depend on the model width. This is
    torchscale's ``RetNetRelPos`` (``decay = log(1 - 2 ** (-5 - arange(H)))``, the log of these
    values) and flash-linear-attention's ``chunk_retention``. ``retention_decays(num_heads)``
    returns them as an array ``(num_heads,)`` of float32 or float64 (the dtypes of ``gammas``), in
    head order, ``num_heads >= 1``. In float64 the values are exact for ``h <= 48`` and round to
    1.0 from ``h = 49``; in float32 they are exact for ``h <= 19`` and round to 1.0 from ``h = 20``
    (torchscale and flash-linear-attention compute them in float32, so their heads 20 and above do
    not decay). The suite compares the result exactly after rounding both sides to the dtype in
    which it passes ``gammas``: float64 when testing float64, else float32.

    Note: yet-another-retnet's decays ``1 - exp(linspace(log(1/32), log(1/512), H))``, that is
    ``1 - 2^(-5 - 4h / (H - 1))``, span ``31/32 .. 511/512`` for every ``H``; they equal these only
    at ``H = 5`` (and ``H = 1``, where ``linspace`` gives its start), and are not conforming.

    .. versionadded:: 0.1.0
    """


@clause("retention.cost", op="retention")
def cost():
    """The recurrent and chunkwise forms need memory linear in ``N``.

    Besides its inputs and outputs, ``retention`` with ``form="recurrent"``, or with
    ``form="chunkwise"`` and a fixed ``chunk_size``, MUST NOT hold an ``N x N`` array (the decay
    matrix ``D`` or the scores): its peak additional memory for fixed ``B``, ``H``, ``D_k`` and
    ``D_v`` grows at most linearly in ``N``. The parallel form MAY be quadratic. The suite checks
    this with the backend's own deterministic peak-memory counter, never with timings.

    .. versionadded:: 0.1.0
    """
