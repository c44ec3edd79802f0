"""Visibility rules: which keys a query may attend to.

Each rule is a predicate ``visible(b, h, i, j)``; the reference writes them as ``mask_mod``
index functions (:mod:`attnspec.reference.masks`). Rules combine by intersection. The
effective lengths of batch item ``b`` are ``Nq(b) = q_lens[b]`` and ``Nk(b) = kv_lens[b]``
when lengths are given, else ``N_q`` and ``N_k``; ``offset(b) = Nk(b) - Nq(b)``.
"""

import attnspec.sdpa  # noqa: F401 (registers the operation these clauses govern)
from attnspec.clauses import clause


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
def sliding_window(i, j, offset, left, right):
    """Sliding window ``(left, right)``: visible iff ``i + offset(b) - left <= j <= i + offset(b) + right``.

    Both bounds are inclusive and bottom-right aligned, as in flash-attn's ``window_size``: a
    query sees ``left`` keys before its aligned position, the key at it, and ``right`` keys after.
    ``-1`` means unbounded on that side; ``(-1, -1)`` (or ``None``) is no window;
    ``(left, 0)`` is a causal bottom-right window. ``left`` and ``right`` are integers
    ``>= -1``. Window ``(w - 1, 0)`` attends to exactly ``w`` keys where all exist
    (implementations have disagreed by one here: HF eager 2048 keys, FA2 2049).

    .. versionadded:: 0.1.0
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
