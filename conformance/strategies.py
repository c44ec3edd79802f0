"""Hypothesis strategies that look for kernel bugs rather than average cases.

Lengths include 1, 2, 3, primes and tile sizes +-1; head dims that are not powers of two;
``N_q`` above and below ``N_k``; 1, 3 and 5 heads and GQA ratios; large magnitudes; rows fully
masked by padding, window or causal offset; zero-length sequences in a batch. The backend's
declared limits (``max_head_dim``, ``max_seq_len``) and clauses are read at draw time, so a
backend is only given cases within what it declares.

``--shapes=menu`` draws shapes from a short menu instead (``MENU_SHAPES``; other strategies'
lengths from ``MENU_LENGTHS``, clamped to the backend's limits): for a backend that compiles once per
shape (static FlexAttention), where a new shape per example costs seconds. The pinned ``@example``
cases keep their own shapes, and a test may still adjust a drawn size (N_q = N_k, batch 2), so the
shapes a run sees are few rather than exactly the menu.

``--shapes=gpu`` (the default on CUDA) adds, for ``sdpa`` cases only, the sizes past a GPU kernel's tiles
(``GPU_LENGTHS``, ``GPU_HEAD_DIMS``): a third of the drawn lengths come from there. The pinned
16k-token cases (``test_sdpa.test_long_sequences``) run only in this tier.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.target import current

LENGTHS = (1, 2, 3, 5, 7, 13, 17, 31, 63, 64, 65, 127, 128, 129)
HEAD_DIMS = (1, 3, 8, 16, 40, 59, 64, 72, 80, 96, 111, 128)
#: (H_q, H_kv) pairs: MHA with 1, 3, 5 heads, MQA, and GQA ratios 2 and 3.
HEADS = ((1, 1), (3, 3), (5, 5), (2, 1), (3, 1), (5, 1), (4, 2), (6, 3), (6, 2))
WINDOW_SIDES = (-1, 0, 1, 2, 3, 7, 16, 63)
SOFTCAPS = (0.5, 5.0, 30.0, 50.0)
#: Keep each case's score matrix small enough that three float64 evaluations stay fast.
MAX_SCORES = 2 * 6 * 129 * 129
#: ``--shapes=menu``: (batch, H_q, H_kv, N_q, N_k, D_qk, D_v). Single elements; N_q below, equal to
#: and above N_k; one 128-wide block and a partial one; odd and unequal head dims; batch 2 (per-batch
#: lengths); GQA ratio 3 (H_kv = H_q where GQA is not drawn).
MENU_SHAPES = (
    (1, 1, 1, 1, 1, 8, 8),
    (2, 3, 3, 17, 17, 80, 80),
    (1, 6, 2, 5, 17, 64, 16),
    (2, 6, 2, 17, 5, 8, 80),
    (1, 6, 2, 17, 129, 80, 80),
    (2, 3, 3, 129, 17, 8, 8),
)
MENU_LENGTHS = (1, 17, 129)
#: ``--shapes=gpu``: around GPU tiles of 128 and 256 rows, and lengths no tile divides.
GPU_LENGTHS = (255, 256, 257, 1000, 4000)
GPU_HEAD_DIMS = (256,)


def _limit(value: int | None, default: int) -> int:
    return default if value is None else min(value, default)


def lengths(max_len: int | None = None) -> st.SearchStrategy[int]:
    return st.deferred(lambda: _lengths(max_len))  # the backend's limit is read at draw time


def _lengths(max_len: int | None) -> st.SearchStrategy[int]:
    top = _limit(current().backend.max_seq_len, _limit(max_len, max(LENGTHS)))
    if current().shape_menu:
        return st.sampled_from(sorted({min(n, top) for n in MENU_LENGTHS}))  # clamped, as _menu_shapes does
    picks = [n for n in LENGTHS if n <= top]
    return st.one_of(st.sampled_from(picks), st.integers(1, min(top, 70)))


def head_dims() -> st.SearchStrategy[int]:
    return st.deferred(_head_dims)


def _head_dims() -> st.SearchStrategy[int]:
    top = _limit(current().backend.max_head_dim, max(HEAD_DIMS))
    return st.sampled_from([d for d in HEAD_DIMS if d <= top])


def _gpu_lengths(max_len: int | None) -> st.SearchStrategy[int]:
    """Lengths of the sdpa cases: the GPU tier's a third of the time (``--shapes=gpu``)."""
    top = _limit(current().backend.max_seq_len, _limit(max_len, max(GPU_LENGTHS)))
    picks = [n for n in GPU_LENGTHS if n <= top]
    return st.one_of(lengths(max_len), lengths(max_len), st.sampled_from(picks)) if picks else lengths(max_len)


def _gpu_head_dims() -> st.SearchStrategy[int]:
    top = _limit(current().backend.max_head_dim, max(GPU_HEAD_DIMS))
    picks = [d for d in GPU_HEAD_DIMS if d <= top]
    return st.one_of(head_dims(), st.sampled_from(picks)) if picks else head_dims()


def head_pairs(gqa: bool) -> st.SearchStrategy[tuple[int, int]]:
    """(H_q, H_kv) pairs; with ``gqa`` False only H_q == H_kv."""
    return st.sampled_from([p for p in HEADS if gqa or p[0] == p[1]])


def _menu_shapes(gqa: bool, max_len: int | None) -> st.SearchStrategy[tuple[int, ...]]:
    backend = current().backend
    top_n = _limit(backend.max_seq_len, _limit(max_len, max(LENGTHS)))
    top_d = _limit(backend.max_head_dim, max(HEAD_DIMS))
    shapes = [
        (b, h_q, h_kv if gqa else h_q, min(n_q, top_n), min(n_k, top_n), min(d_qk, top_d), min(d_v, top_d))
        for b, h_q, h_kv, n_q, n_k, d_qk, d_v in MENU_SHAPES
    ]
    return st.sampled_from(sorted(set(shapes), key=shapes.index))


@st.composite
def _shapes(draw, gqa: bool, max_len: int | None) -> tuple[int, ...]:
    """(batch, H_q, H_kv, N_q, N_k, D_qk, D_v)."""
    if current().shape_menu:
        return draw(_menu_shapes(gqa, max_len))
    h_q, h_kv = draw(head_pairs(gqa))
    gpu = current().shapes == "gpu"
    length = _gpu_lengths(max_len) if gpu else lengths(max_len)
    head_dim = _gpu_head_dims() if gpu else head_dims()
    n_q, n_k = draw(length), draw(length)
    d_qk = draw(head_dim)
    d_v = draw(st.one_of(st.just(d_qk), head_dim))
    batch = draw(st.integers(1, 2)) if n_q * n_k * h_q <= MAX_SCORES // 2 else 1
    return batch, h_q, h_kv, n_q, n_k, d_qk, d_v


def declares(clause_id: str) -> bool:
    return clause_id in current().backend.declared


def seqlens(batch: int, n: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Per-batch lengths biased to the edges: 0, 1, n - 1 and n."""
    edge = st.sampled_from(sorted({0, min(1, n), max(n - 1, 0), n}))
    return st.lists(st.one_of(edge, st.integers(0, n)), min_size=batch, max_size=batch).map(tuple)


def windows() -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.sampled_from(WINDOW_SIDES), st.sampled_from(WINDOW_SIDES)).filter(lambda w: w != (-1, -1))


@st.composite
def sdpa_cases(
    draw,
    *,
    causal: str | None = None,
    window: bool = False,
    mask: bool = False,
    bias: bool = False,
    softcap: bool = False,
    alibi: bool = False,
    padding: bool = False,
    gqa: bool | None = None,
    scale: bool = False,
    extras: bool = False,
    magnitudes: tuple[str, ...] = ("unit", "large"),
    max_len: int | None = None,
) -> SdpaCase:
    """A case with the named options on; ``extras`` adds other declared options at random.

    ``gqa`` None draws GQA shapes only if the backend declares ``sdpa.gqa``.
    """
    if gqa is None:
        gqa = declares("sdpa.gqa")
    batch, h_q, h_kv, n_q, n_k, d_qk, d_v = draw(_shapes(gqa, max_len))
    case = SdpaCase(
        batch=batch,
        h_q=h_q,
        h_kv=h_kv,
        n_q=n_q,
        n_k=n_k,
        d_qk=d_qk,
        d_v=d_v,
        seed=draw(st.integers(0, 2**32 - 1)),
        magnitude=draw(st.sampled_from(magnitudes)),
        causal=causal,
    )
    on = dict(window=window, mask=mask, bias=bias, softcap=softcap, alibi=alibi, padding=padding, scale=scale)
    if extras:
        for name, clause_id in (
            ("window", "sdpa.window"),
            ("mask", "sdpa.mask"),
            ("bias", "sdpa.bias"),
            ("softcap", "sdpa.softcap"),
            ("alibi", "sdpa.alibi"),
            ("padding", "sdpa.padding"),
            ("scale", "sdpa.scale"),
        ):
            on[name] = on[name] or (declares(clause_id) and draw(st.booleans()))
        if case.causal is None and draw(st.booleans()):
            options = [c for c in ("top_left", "bottom_right") if declares(f"sdpa.causal.{c}")]
            case = case.with_(causal=draw(st.sampled_from(options))) if options else case
    return draw(_with_options(case, **on))


@st.composite
def _with_options(draw, case: SdpaCase, *, window, mask, bias, softcap, alibi, padding, scale) -> SdpaCase:
    changes: dict = {}
    if scale:
        changes["scale"] = draw(st.sampled_from([None, 1.0 / math.sqrt(case.d_qk), 0.3, 1.7]))
    if window:
        changes["window"] = draw(windows())
    if mask:
        changes["mask"] = draw(st.sampled_from(["full", "per_key", "per_head"]))
        changes["mask_density"] = draw(st.sampled_from([0.0, 0.2, 0.7, 1.0]))
    if bias:
        changes["bias"] = draw(st.sampled_from(["full", "per_key", "per_head"]))
        changes["bias_neg_inf"] = draw(st.booleans())
    if softcap:
        changes["softcap"] = draw(st.sampled_from(SOFTCAPS))
    if alibi:
        changes["alibi"] = True
        changes["alibi_per_batch"] = draw(st.booleans())
    if padding:
        changes["q_lens"] = draw(seqlens(case.batch, case.n_q))
        changes["kv_lens"] = draw(seqlens(case.batch, case.n_k))
    return case.with_(**changes)


def block_sizes(n: int) -> st.SearchStrategy[int]:
    """Tile sizes: 1, small odd sizes, powers of two, and ones that do not divide ``n``."""
    return st.sampled_from(sorted({1, 2, 3, 5, 16, 32, 64, 128, max(1, n - 1), n + 1}))
