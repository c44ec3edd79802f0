"""The context-parallel reference (clauses ``cp.*``) against the dense reference, independently of the suite.

The layouts are checked against a scalar transcription of the clause texts; the simulated ring and
Ulysses against ``sdpa`` on the gathered sequence; the pair plan against brute force over the
pairs' visible sets; and every error names its argument.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attnspec import reference
from attnspec.reference import cp


def scalar_pos(layout: str, p: int, c: int, r: int, t: int) -> int:
    """``pos(r, t)`` transcribed from the clause texts, one token at a time."""
    if layout == "contiguous":
        return r * c + t
    half = c // 2
    return r * half + t if t < half else (2 * p - 1 - r) * half + (t - half)


@pytest.mark.parametrize("layout", cp.LAYOUTS)
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("c", [0, 2, 4, 6])
def test_positions_are_the_clause_and_a_permutation(layout, p, c):
    pos = cp.positions(layout, p, c)
    assert pos.shape == (p, c)
    expected = [[scalar_pos(layout, p, c, r, t) for t in range(c)] for r in range(p)]
    assert pos.tolist() == expected
    assert sorted(pos.ravel().tolist()) == list(range(p * c))
    assert all((np.diff(row) > 0).all() for row in pos)  # increasing along every shard
    if layout == "zigzag" and c:  # the inverse stated in cp.layout.zigzag
        for i in range(p * c):
            chunk = i // (c // 2)
            rank = chunk if chunk < p else 2 * p - 1 - chunk
            assert i in pos[rank]


def test_zigzag_balances_causal_pairs():
    """cp.layout.zigzag's note: every rank holds 2P c^2 + c visible causal pairs."""
    for p, half in itertools.product([1, 2, 3, 4], [1, 2, 3]):
        pos = cp.positions("zigzag", p, 2 * half)
        counts = [int((pos[r][:, None] >= np.arange(p * 2 * half)[None, :]).sum()) for r in range(p)]
        assert counts == [2 * p * half**2 + half] * p


def inputs(p, c, *, batch=2, h_q=4, h_kv=2, d=5, d_v=3, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((p, batch, h_q, c, d))
    k = rng.standard_normal((p, batch, h_kv, c, d))
    v = rng.standard_normal((p, batch, h_kv, c, d_v))
    return q, k, v


CASES = [
    dict(p=p, c=c, layout=layout, causal=causal, lens=lens)
    for p in (1, 2, 3, 4)
    for c in (2, 4)
    for layout in cp.LAYOUTS
    for causal in (None, "top_left", "bottom_right")
    for lens in (None, "edges")
]


@pytest.mark.parametrize("scheme", cp.SCHEMES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_simulated_ranks_equal_the_gathered_sdpa(scheme, case):
    p, c = case["p"], case["c"]
    n = p * c
    q, k, v = inputs(p, c, h_q=2 * p, h_kv=p, seed=p * 7 + c)
    lens = None if case["lens"] is None else np.array([max(n - c - 1, 0), min(c + 1, n)])
    options = dict(layout=case["layout"], causal=case["causal"], seq_lens=lens)
    out, lse = reference.cp.context_parallel(q, k, v, scheme=scheme, **options)
    # the definition, computed here from scratch: gather by the scalar positions, sdpa, scatter
    pos = [[scalar_pos(case["layout"], p, c, r, t) for t in range(c)] for r in range(p)]
    gq, gk, gv = (np.zeros(x.shape[1:3] + (n,) + x.shape[4:]) for x in (q, k, v))
    for r, t in itertools.product(range(p), range(c)):
        gq[:, :, pos[r][t]], gk[:, :, pos[r][t]], gv[:, :, pos[r][t]] = q[r, :, :, t], k[r, :, :, t], v[r, :, :, t]
    ref_out, ref_lse = reference.sdpa(gq, gk, gv, causal=case["causal"], q_lens=lens, kv_lens=lens, return_lse=True)
    for r, t in itertools.product(range(p), range(c)):
        np.testing.assert_allclose(out[r, :, :, t], ref_out[:, :, pos[r][t]], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(lse[r, :, :, t], ref_lse[:, :, pos[r][t]], rtol=1e-12, atol=1e-13)
    gathered = cp.gathered(q, k, v, **options)
    np.testing.assert_allclose(out, gathered[0], rtol=1e-12, atol=1e-13)


def test_padding_is_never_read():
    """cp.lengths: NaN at every position past seq_lens leaves every output finite."""
    p, c = 3, 4
    q, k, v = inputs(p, c, h_q=6, h_kv=3)
    lens = np.array([5, 0])
    for layout, scheme in itertools.product(cp.LAYOUTS, cp.SCHEMES):
        pos = cp.positions(layout, p, c)
        pad = pos[:, None, None, :] >= lens[None, :, None, None]  # (P, B, 1, C)
        kn, vn = (np.where(pad[..., None], np.nan, x) for x in (k, v))
        out, lse = reference.cp.context_parallel(
            q, kn, vn, layout=layout, scheme=scheme, seq_lens=lens, causal="top_left"
        )
        assert np.isfinite(out).all()
        assert (out[np.broadcast_to(pad, lse.shape)] == 0).all()
        assert np.isneginf(lse[np.broadcast_to(pad, lse.shape)]).all()


def brute_kind(q_pos, k_pos, causal: bool) -> str:
    vis = (k_pos[None, :] <= q_pos[:, None]) if causal else np.ones((len(q_pos), len(k_pos)), bool)
    if not vis.any():
        return "skipped"
    if vis.all():
        return "full"
    return "diagonal" if np.array_equal(vis, np.tril(np.ones_like(vis))) and np.array_equal(q_pos, k_pos) else "masked"


@pytest.mark.parametrize("layout", cp.LAYOUTS)
def test_pair_kinds_are_the_clause(layout):
    """cp.causal.pairs: the classes by brute force over the visible pairs, per run and per shard."""
    for p, c in itertools.product([1, 2, 3, 4], [2, 4]):
        pos = cp.positions(layout, p, c)
        runs = [
            list(pos[r].reshape(1, c)) if layout == "contiguous" else [pos[r][: c // 2], pos[r][c // 2 :]]
            for r in range(p)
        ]
        for r, s in itertools.product(range(p), range(p)):
            for a, b in itertools.product(runs[r], runs[s]):
                kind = cp.pair_kind(a, b, True)
                assert kind == brute_kind(a, b, True) and kind != "masked"
            if layout == "contiguous":
                assert cp.pair_kind(pos[r], pos[s], True) == ("full" if s < r else "diagonal" if s == r else "skipped")
            assert cp.pair_kind(pos[r], pos[s], False) == "full"


def test_ring_skips_exactly_the_pairs_without_visible_keys():
    """Counting the partials the ring computes: causal contiguous P = 4 computes the 10 pairs s <= r."""
    q, k, v = inputs(4, 2)
    calls = []

    def counting(*args):
        calls.append(1)
        return cp.partial(*args)

    problem = cp.prepare(q, k, v, causal="top_left")
    cp.ring(problem, compute=counting)
    assert len(calls) == 10
    calls.clear()
    cp.ring(cp.prepare(q, k, v, causal="top_left", layout="zigzag"), compute=counting)
    assert len(calls) == 16  # zigzag: every pair holds a visible key


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layout="zigzag"), "layout 'zigzag' needs an even shard length"),
        (dict(layout="striped"), "layout must be one of"),
        (dict(scheme="tree"), "scheme must be one of"),
        (dict(scheme="ulysses", h_kv=3), "scheme 'ulysses' needs H_kv divisible by P"),
        (dict(causal=True), "causal must be None"),
        (dict(seq_lens=np.array([7, 1])), "seq_lens must be <= 6"),
        (dict(seq_lens=np.array([1.0, 1.0])), "seq_lens must be an integer array"),
        (dict(scale=float("nan")), "scale must be finite"),
        (dict(p_k=3), "k and v must have P = 2 shards"),
        (dict(q_ndim=4), "q must have 5 dimensions"),
        (dict(p=0), r"q must have at least one shard"),
        (dict(h_kv=3, h_q=4), r"H_q = 4 \(q.shape\[1\]\) must be a multiple of H_kv = 3"),
    ],
)
def test_errors_name_the_argument(kwargs, match):
    kwargs = dict(kwargs)
    p, h_kv, h_q = kwargs.pop("p", 2), kwargs.pop("h_kv", 2), kwargs.pop("h_q", 6)
    c = 3
    q, k, v = inputs(p, c, h_q=h_q, h_kv=h_kv)
    if kwargs.pop("p_k", None):
        k = np.concatenate([k, k[:1]])
    if kwargs.pop("q_ndim", None):
        q = q[0]
    with pytest.raises((ValueError, TypeError), match=match):
        reference.cp.context_parallel(q, k, v, **kwargs)


def test_empty_sequence():
    q, k, v = inputs(2, 0)
    for layout in cp.LAYOUTS:
        out, lse = reference.cp.context_parallel(q, k, v, layout=layout, causal="top_left")
        assert out.shape == (2, 2, 4, 0, 3) and lse.shape == (2, 2, 4, 0)
