"""The sparse reference: its tables against a scalar transcription of the clause texts, its
candidate keys against the dense tables, its counted work, and its argument errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnspec import reference
from attnspec.conformance.sparse_cases import BUDGETED, budgeted_params
from attnspec.reference import patterns
from attnspec.reference import sparse as S

PATTERNS = tuple(S.BUILDERS)


def random_params(pattern: str, rng: np.random.Generator, n_k: int, batch: int, heads: int) -> dict:
    """Parameters drawn independently of the conformance strategies, edges included."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if pattern == "dilated":
        dilation = int(rng.integers(1, 5)) if rng.random() < 0.5 else rng.integers(1, 5, size=heads)
        return dict(window=pick([0, 1, 2, 3, 9]), dilation=dilation, causal=bool(rng.random() < 0.5))
    if pattern == "longformer":
        return dict(window=pick([0, 1, 2, 5]), global_tokens=rng.random(pick([(n_k,), (batch, n_k)])) < 0.15)
    if pattern == "bigbird":
        block = pick([1, 2, 3, 5, 8])
        n_blocks = -(-n_k // block)
        return dict(
            block=block,
            window_blocks=pick([0, 1, 2]),
            global_blocks=rng.choice(n_blocks, size=int(rng.integers(0, min(n_blocks, 2) + 1)), replace=False),
            random_blocks=rng.integers(0, n_blocks, size=(pick([1, heads]), n_blocks, pick([0, 1, 3]))),
        )
    if pattern == "strided":
        return dict(stride=pick([1, 2, 3, 4, 7]), factor=pick(patterns.FACTORS))
    if pattern == "fixed":
        stride = pick([1, 2, 3, 4, 7])
        return dict(stride=stride, summary=int(rng.integers(1, stride + 1)), factor=pick(patterns.FACTORS))
    if pattern == "block_sparse":
        block_q, block_k = pick([1, 2, 3, 5, 16]), pick([1, 2, 4, 7, 16])
        shape = (pick([1, heads]), -(-n_k // block_q), -(-n_k // block_k))
        return dict(layout=rng.random(shape) < pick([0.0, 0.3, 0.8]), block_q=block_q, block_k=block_k)
    if pattern == "prefix_lm":
        return dict(prefix_lens=rng.integers(0, n_k + 1, size=batch))
    if pattern == "document":
        ids = np.sort(rng.integers(0, 4, size=pick([(n_k,), (batch, n_k)])), axis=-1)
        return dict(document_ids=ids if rng.random() < 0.5 else ids % 2 - 3, causal=bool(rng.random() < 0.5))
    return dict(chunk=pick([1, 2, 3, 5, 8]), causal=bool(rng.random() < 0.5))


def scalar_visible(pattern: str, prm: dict, b: int, h: int, p: int, j: int) -> bool:
    """``visible(b, h, p, j)`` transcribed from the clause texts, one pair at a time."""

    def pick(array, index):  # an extent of 1 applies to every index
        return array[index if len(array) > 1 else 0]

    causal = prm.get("causal", False)
    if pattern == "dilated":
        d = int(pick(np.atleast_1d(prm.get("dilation", 1)), h))
        return (p - j) % d == 0 and abs(p - j) <= prm["window"] * d and (not causal or j <= p)
    if pattern == "longformer":
        g = pick(np.atleast_2d(prm["global_tokens"]), b)
        return abs(p - j) <= prm["window"] or bool(g[p]) or bool(g[j])
    if pattern == "bigbird":
        row, col = p // prm["block"], j // prm["block"]
        glob = list(prm.get("global_blocks", []))
        return (
            abs(row - col) <= prm["window_blocks"]
            or row in glob
            or col in glob
            or col in list(pick(prm["random_blocks"], h)[row])
        )
    if pattern in ("strided", "fixed"):
        l = prm["stride"]
        if pattern == "strided":
            a1, a2 = max(0, p - l) <= j <= p, j <= p and (p - j) % l == 0
        else:
            a1, a2 = j <= p and j // l == p // l, j <= p and j % l >= l - prm["summary"]
        return {"merged": a1 or a2, "a1": a1, "a2": a2}[prm.get("factor", "merged")]
    if pattern == "block_sparse":
        return bool(pick(prm["layout"], h)[p // prm["block_q"], j // prm["block_k"]])
    if pattern == "prefix_lm":
        return j < prm["prefix_lens"][b] or j <= p
    if pattern == "document":
        ids = pick(np.atleast_2d(prm["document_ids"]), b)
        return ids[p] == ids[j] and (not causal or j <= p)
    return p // prm["chunk"] == j // prm["chunk"] and (not causal or j <= p)


def extents(pattern: str, prm: dict) -> tuple[int, int]:
    """``(B_p, H_p)`` as each clause states them."""
    if pattern == "dilated":
        return 1, np.size(prm.get("dilation", 1)) if np.ndim(prm.get("dilation", 1)) else 1
    if pattern in ("longformer", "document"):
        ids = prm["global_tokens" if pattern == "longformer" else "document_ids"]
        return (ids.shape[0] if ids.ndim == 2 else 1), 1
    if pattern in ("bigbird", "block_sparse"):
        return 1, prm["random_blocks" if pattern == "bigbird" else "layout"].shape[0]
    return (prm["prefix_lens"].size, 1) if pattern == "prefix_lm" else (1, 1)


@st.composite
def problems(draw, max_len: int = 24):
    pattern = draw(st.sampled_from(PATTERNS))
    n_k = draw(st.integers(1, max_len))
    n_q = draw(st.one_of(st.just(n_k), st.integers(0, n_k)))
    batch, heads = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return pattern, n_q, n_k, batch, heads, random_params(pattern, rng, n_k, batch, heads), rng


@settings(max_examples=300, deadline=None)
@given(problems())
def test_table_matches_the_scalar_transcription(problem):
    pattern, n_q, n_k, _, _, prm, _ = problem
    got = S.sparse_mask(pattern, n_q, n_k, **prm)
    b_p, h_p = extents(pattern, prm)
    assert got.dtype == np.bool_ and got.shape == (b_p, h_p, n_q, n_k)
    want = [
        [
            [[scalar_visible(pattern, prm, b, h, i + n_k - n_q, j) for j in range(n_k)] for i in range(n_q)]
            for h in range(h_p)
        ]
        for b in range(b_p)
    ]
    np.testing.assert_array_equal(got, np.array(want, dtype=bool).reshape(got.shape))


@settings(max_examples=300, deadline=None)
@given(problems(max_len=80), st.sampled_from([1, 3, 8, 32]))
def test_candidates_cover_every_visible_pair(problem, row_tile):
    """Every visible pair of a row tile is among its candidate keys (sorted, distinct, in range)."""
    pattern, n_q, n_k, _, _, prm, _ = problem
    table = S.sparse_mask(pattern, n_q, n_k, **prm)
    covered = np.zeros(n_q, dtype=int)
    for rows, keys in S.plan(S.build(pattern, n_q, n_k, **prm), n_q, n_k, row_tile):
        assert (
            keys.dtype.kind == "i" and np.all(np.diff(keys) > 0) and (keys.size == 0 or 0 <= keys[0] <= keys[-1] < n_k)
        )
        outside = np.ones(n_k, dtype=bool)
        outside[keys] = False
        assert not table[:, :, rows.start : rows.stop][..., outside].any(), f"tile {rows} misses visible keys"
        covered[rows.start : rows.stop] += 1
    assert np.all(covered == 1)


@settings(max_examples=150, deadline=None)
@given(problems(max_len=40), st.sampled_from([1, 2, 5, 32]), st.sampled_from([1, 2]))
def test_sparse_equals_dense_attention_with_the_table(problem, row_tile, group):
    pattern, n_q, n_k, batch, heads, prm, rng = problem
    q = rng.standard_normal((batch, heads * group, n_q, 3)) * 4
    k, v = rng.standard_normal((batch, heads, n_k, 3)), rng.standard_normal((batch, heads, n_k, 2))
    if extents(pattern, prm)[1] not in (1, heads * group):
        with pytest.raises(ValueError, match="heads; q has H_q"):
            S.sparse(q, k, v, pattern=pattern, **prm)
        return
    table = S.sparse_mask(pattern, n_q, n_k, **prm)
    stats = {}
    out, lse = S.sparse(q, k, v, pattern=pattern, return_lse=True, stats=stats, row_tile=row_tile, **prm)
    want_out, want_lse = reference.sdpa(q, k, v, mask=table, return_lse=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)
    assert stats["visible_pairs"] == np.broadcast_to(table, out.shape[:3] + (n_k,)).sum() <= stats["score_elements"]


@settings(max_examples=100, deadline=None)
@given(problems())
def test_rows_are_the_last_rows_of_the_full_table(problem):
    """Bottom-right alignment: ``N_q`` rows are the last ``N_q`` of the ``N_k x N_k`` table."""
    pattern, n_q, n_k, _, _, prm, _ = problem
    full = S.sparse_mask(pattern, n_k, n_k, **prm)
    np.testing.assert_array_equal(S.sparse_mask(pattern, n_q, n_k, **prm), full[:, :, n_k - n_q :])


@pytest.mark.parametrize("n_q, n_k", [(9, 9), (3, 11), (1, 1)])
def test_patterns_that_are_other_rules(n_q, n_k):
    """The special cases the clauses name: plain windows, causal, full, chunks as documents."""

    def sdpa_table(**options):
        q, k = np.zeros((1, 1, n_q, 1)), np.zeros((1, 1, n_k, 1))
        one_hot = np.broadcast_to(np.eye(n_k), (1, 1, n_k, n_k))
        return reference.sdpa(q, k, one_hot, **options) > 0

    mask = S.sparse_mask
    np.testing.assert_array_equal(mask("dilated", n_q, n_k, window=2), sdpa_table(window=(2, 2)))
    np.testing.assert_array_equal(mask("dilated", n_q, n_k, window=2, causal=True), sdpa_table(window=(2, 0)))
    np.testing.assert_array_equal(mask("prefix_lm", n_q, n_k, prefix_lens=[0]), sdpa_table(causal="bottom_right"))
    assert mask("prefix_lm", n_q, n_k, prefix_lens=[n_k]).all()
    np.testing.assert_array_equal(
        mask("chunked", n_q, n_k, chunk=4, causal=True),
        mask("document", n_q, n_k, document_ids=np.arange(n_k) // 4, causal=True),
    )
    np.testing.assert_array_equal(
        mask("bigbird", n_q, n_k, block=1, window_blocks=2), mask("dilated", n_q, n_k, window=2)
    )
    np.testing.assert_array_equal(
        mask("block_sparse", n_q, n_k, layout=np.ones((1, 1, 1), bool), block_q=n_k, block_k=n_k),
        mask("strided", n_q, n_k, stride=1) | ~mask("strided", n_q, n_k, stride=1),
    )


@pytest.mark.parametrize("pattern", BUDGETED)
def test_work_grows_linearly_with_a_fixed_budget(pattern):
    """Score elements evaluated (the reference's deterministic cost) grow ~x4 for x4 in N."""

    work = []
    for n in (512, 2048):
        q = k = v = np.zeros((1, 2, n, 4))
        stats = {}
        S.sparse(q, k, v, pattern=pattern, stats=stats, **budgeted_params(pattern, n, heads=2))
        work.append(stats["score_elements"])
    assert work[1] / work[0] < 5.0, f"x{work[1] / work[0]:.2f} for x4 in N"
    assert work[1] < 2 * 2048 * 2048 / 4  # far from dense (B * H_q * N^2) at N = 2048


def empty_params(pattern: str, n_k: int) -> list[dict]:
    """Parameters valid at any ``N_k >= 0``, with batch and head extents of 2 where a pattern has them."""
    blocks = -(-n_k // 4)
    return {
        "dilated": [dict(window=2, dilation=np.array([1, 3]), causal=True)],
        "longformer": [
            dict(window=1, global_tokens=np.zeros(n_k, bool)),
            dict(window=1, global_tokens=np.arange(2 * n_k).reshape(2, n_k) % 3 == 0),
        ],
        "bigbird": [
            dict(block=4, window_blocks=1, global_blocks=np.zeros(0, int), random_blocks=np.zeros((2, blocks, 1), int))
        ],
        "strided": [dict(stride=3)],
        "fixed": [dict(stride=3, summary=1)],
        "block_sparse": [dict(layout=np.ones((2, blocks, blocks), bool), block_q=4, block_k=4)],
        "prefix_lm": [dict(prefix_lens=np.array([0, n_k]))],
        "document": [dict(document_ids=np.zeros(n_k, int)), dict(document_ids=np.zeros((2, n_k), int), causal=True)],
        "chunked": [dict(chunk=3)],
    }[pattern]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("n_q, n_k", [(0, 0), (0, 5)])
def test_no_queries_or_no_keys(pattern, n_q, n_k):
    """``N_q = 0`` (and ``N_k = 0``) is an empty result with the pattern's extents, never an error."""
    for prm in empty_params(pattern, n_k):
        b_p, h_p = extents(pattern, prm)
        table = S.sparse_mask(pattern, n_q, n_k, **prm)
        assert table.dtype == np.bool_ and table.shape == (b_p, h_p, n_q, n_k)
        q, k, v = np.zeros((2, 2, n_q, 4)), np.zeros((2, 2, n_k, 4)), np.zeros((2, 2, n_k, 3))
        out, lse = S.sparse(q, k, v, pattern=pattern, return_lse=True, **prm)
        assert out.shape == (2, 2, n_q, 3) and lse.shape == (2, 2, n_q)


def test_pinned_example_has_rows_with_and_without_keys():
    """The suite's pinned ``sdpa.fully_masked`` example must keep a mix, or its test checks nothing."""
    from attnspec.conformance.sparse_cases import EMPTY_ROWS as case

    table = S.sparse_mask(case.pattern, case.n_q, case.n_k, **case.pattern_params())
    has_keys = np.broadcast_to(table, (case.batch, case.h_q, case.n_q, case.n_k)).any(axis=-1)
    assert 0 < int(has_keys.sum()) < has_keys.size, f"{int((~has_keys).sum())} rows without keys of {has_keys.size}"


def test_random_blocks_helper_is_a_function_of_its_seed():
    a = patterns.bigbird_random_blocks(7, 3, heads=2, seed=5)
    assert a.shape == (2, 7, 3) and a.min() >= 0 and a.max() < 7
    np.testing.assert_array_equal(a, patterns.bigbird_random_blocks(7, 3, heads=2, seed=5))
    assert not np.array_equal(a, patterns.bigbird_random_blocks(7, 3, heads=2, seed=6))


Q, K, V = np.ones((2, 4, 3, 8)), np.ones((2, 2, 5, 8)), np.ones((2, 2, 5, 6))


@pytest.mark.parametrize(
    "pattern, params, error, message",
    [
        ("diluted", dict(window=1), ValueError, "pattern must be one of"),
        (
            "dilated",
            dict(window=1, stride=2),
            TypeError,
            r"pattern 'dilated' has no parameter\(s\) \['stride'\]; its parameters are window, dilation, causal",
        ),
        ("chunked", dict(), TypeError, r"pattern 'chunked' needs parameter\(s\) \['chunk'\]"),
        ("dilated", dict(window=-1), ValueError, "window must be >= 0; got -1"),
        ("dilated", dict(window=1.0), TypeError, "window must be an integer"),
        ("dilated", dict(window=1, dilation=0), ValueError, "dilation must be >= 1"),
        (
            "dilated",
            dict(window=1, dilation=np.ones((2, 2), int)),
            ValueError,
            r"dilation must have 0 or 1 dimension\(s\)",
        ),
        ("dilated", dict(window=1, causal=1), TypeError, "causal must be a bool; got 1"),
        (
            "longformer",
            dict(window=1, global_tokens=np.zeros(5, int)),
            TypeError,
            "global_tokens must be a boolean array; got dtype int64",
        ),
        (
            "longformer",
            dict(window=1, global_tokens=np.zeros(4, bool)),
            ValueError,
            r"global_tokens must have shape \(N_k,\) = \(5,\) or \(B, N_k\)",
        ),
        ("bigbird", dict(block=0, window_blocks=1), ValueError, "block must be >= 1"),
        (
            "bigbird",
            dict(block=2, window_blocks=1, global_blocks=[3]),
            ValueError,
            "global_blocks must be <= 2; got maximum 3",
        ),
        (
            "bigbird",
            dict(block=2, window_blocks=1, random_blocks=np.zeros((1, 2, 1), int)),
            ValueError,
            r"random_blocks must have shape \(H, n_blocks, r\) with n_blocks = ceil\(N_k / block\) = 3",
        ),
        (
            "bigbird",
            dict(block=2, window_blocks=1, random_blocks=np.zeros((1, 3, 1))),
            TypeError,
            "random_blocks must be an integer array",
        ),
        ("strided", dict(stride=0), ValueError, "stride must be >= 1"),
        ("strided", dict(stride=2, factor="both"), ValueError, "factor must be one of"),
        ("fixed", dict(stride=2, summary=3), ValueError, "summary must be <= stride = 2; got 3"),
        (
            "block_sparse",
            dict(layout=np.ones((1, 2, 2), bool), block_q=2, block_k=2),
            ValueError,
            r"layout must have shape \(H, ceil\(N_k / block_q\), ceil\(N_k / block_k\)\) = \(H, 3, 3\); got \(1, 2, 2\)",
        ),
        (
            "block_sparse",
            dict(layout=np.ones((1, 3, 3), int), block_q=2, block_k=2),
            TypeError,
            "layout must be a boolean array",
        ),
        (
            "block_sparse",
            dict(layout=np.ones((3, 3), bool), block_q=2, block_k=2),
            ValueError,
            "layout must have shape",
        ),
        (
            "block_sparse",
            dict(layout=np.ones((1, 3, 3), bool), block_q=2, block_k=-1),
            ValueError,
            "block_k must be >= 1",
        ),
        ("prefix_lm", dict(prefix_lens=np.array([1, 6])), ValueError, "prefix_lens must be <= 5; got maximum 6"),
        ("prefix_lm", dict(prefix_lens=np.array([1.0, 2.0])), TypeError, "prefix_lens must be an integer array"),
        (
            "document",
            dict(document_ids=np.zeros(5)),
            TypeError,
            "document_ids must be an integer array; got dtype float64",
        ),
        (
            "document",
            dict(document_ids=np.zeros(4, int)),
            ValueError,
            r"document_ids must have shape \(N_k,\) = \(5,\) or \(B, N_k\)",
        ),
        ("chunked", dict(chunk=0), ValueError, "chunk must be >= 1"),
    ],
)
def test_pattern_parameters_are_checked(pattern, params, error, message):
    with pytest.raises(error, match=message):
        S.sparse_mask(pattern, 3, 5, **params)
    with pytest.raises(error, match=message):
        S.sparse(Q, K, V, pattern=pattern, **params)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: S.sparse_mask("chunked", 6, 5, chunk=2),
            ValueError,
            r"N_q = 6 \(n_q, or q.shape\[2\]\) exceeds N_k = 5",
        ),
        (
            lambda: S.sparse(np.ones((2, 4, 6, 8)), K, V, pattern="chunked", chunk=2),
            ValueError,
            "N_q = 6 .* exceeds N_k = 5",
        ),
        (lambda: S.sparse_mask("chunked", 2.0, 5, chunk=2), TypeError, "n_q must be an integer"),
        (
            lambda: S.sparse(Q, K, V, pattern="prefix_lm", prefix_lens=[1, 2, 3]),
            ValueError,
            r"prefix_lens has 3 batch items; q has B = 2 \(expected 1 or B\)",
        ),
        (
            lambda: S.sparse(Q, K, V, pattern="dilated", window=1, dilation=[1, 2, 3]),
            ValueError,
            r"dilation has 3 heads; q has H_q = 4 \(expected 1 or H_q\)",
        ),
        (
            lambda: S.sparse(Q, K, V, pattern="block_sparse", layout=np.ones((2, 3, 3), bool), block_q=2, block_k=2),
            ValueError,
            "layout has 2 heads; q has H_q = 4",
        ),
        (lambda: S.sparse(Q, K, V, pattern="chunked", chunk=2, row_tile=0), ValueError, "row_tile must be >= 1"),
        (
            lambda: S.sparse(Q.astype(int), K, V, pattern="chunked", chunk=2),
            TypeError,
            "q must be a real floating-point array",
        ),
        (
            lambda: S.sparse(Q[:, :3], K, V, pattern="chunked", chunk=2),
            ValueError,
            "H_q = 3 .* must be a multiple of H_kv = 2",
        ),
    ],
)
def test_other_arguments_are_checked(call, error, message):
    with pytest.raises(error, match=message):
        call()
