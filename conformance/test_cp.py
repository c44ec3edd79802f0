"""Conformance of context-parallel attention (clauses ``cp.*`` of :mod:`attnspec.cp`).

Every test compares the shards a backend returns with ``sdpa`` on the whole sequence, cut into the
same shards: the expected result never goes through a layout's arithmetic but the reference's
position map, which ``tests/test_reference_cp.py`` checks against the clause text.
"""

import numpy as np
import pytest
from hypothesis import example, given

from attnspec import reference
from attnspec.conformance.calls import call, call_unguarded
from attnspec.conformance.cp_cases import CpCase, cp_cases, declared_schemes, max_world_size
from attnspec.conformance.target import decline
from attnspec.conformance.tolerance import sdpa_bounds
from attnspec.reference import cp as reference_cp


def check_cp(check, case: CpCase, dtype: str):
    """``context_parallel`` on the case's shards against the gathered ``sdpa``; ``(out, lse, expected)``."""
    __tracebackhide__ = True
    case = case.resolved()
    if case.world_size > max_world_size():
        decline(f"P = {case.world_size} is beyond the backend's max_world_size {max_world_size()}")
    q, k, v, options, (gq, gk, gv, sdpa_options) = case.inputs(dtype)
    out, lse = call("context_parallel", q, k, v, **options)
    ref_out, ref_lse = reference.sdpa(gq, gk, gv, return_lse=True, **sdpa_options)
    bound_out, bound_lse = sdpa_bounds(gq, gk, gv, sdpa_options, dtype, ref_out, ref_lse)
    pos = case.positions()
    expected_out = reference_cp.shard(ref_out, pos)
    expected_lse = reference_cp.shard(ref_lse[..., None], pos)[..., 0]
    check.close(out, expected_out, bound_out, what="cp out (P, B, H_q, C, D_v)", case=case)
    check.close(lse, expected_lse, bound_lse, what="cp lse (P, B, H_q, C)", case=case)
    return out, lse, expected_lse


#: Pinned: one rank; four ranks (every ring step); an empty sequence; GQA with two KV heads per rank.
EXAMPLES = (
    CpCase(world_size=1, shard_len=6, causal="top_left"),
    CpCase(world_size=4, batch=2, h_q=4, h_kv=2, shard_len=4, seed=3),
    CpCase(world_size=2, shard_len=0),
    CpCase(world_size=2, h_q=8, h_kv=4, shard_len=2, seed=5, causal="bottom_right"),
)


@pytest.mark.clause("cp")
@given(case=cp_cases())
@example(case=EXAMPLES[0])
@example(case=EXAMPLES[1])
@example(case=EXAMPLES[2])
@example(case=EXAMPLES[3])
def test_cp_equals_gathered_sdpa(check, dtype, case):
    """Every declared layout and scheme, P = 1 to 4, causal or not, lengths or not: sdpa's shards."""
    check_cp(check, case, dtype)


@pytest.mark.clause("cp.layout.contiguous")
@given(case=cp_cases(layouts=("contiguous",), causal=True, min_world=2))
@example(case=CpCase(world_size=4, shard_len=3, layout="contiguous", causal="top_left", seed=1))
@example(case=CpCase(world_size=3, shard_len=1, layout="contiguous", causal="top_left", seq_lens=(2,)))
def test_layout_contiguous(check, dtype, case):
    """Rank r holds positions r C .. (r + 1) C - 1: seen through a causal mask, which depends on them."""
    check_cp(check, case, dtype)


@pytest.mark.clause("cp.layout.zigzag")
@given(case=cp_cases(layouts=("zigzag",), causal=True, min_world=2))
@example(case=CpCase(world_size=2, shard_len=4, layout="zigzag", causal="top_left", seed=2))
@example(case=CpCase(world_size=4, shard_len=2, layout="zigzag", causal="bottom_right", seed=4))
@example(case=CpCase(world_size=3, shard_len=6, layout="zigzag", causal="top_left", batch=2, seq_lens=(17, 4)))
def test_layout_zigzag(check, dtype, case):
    """Rank r holds chunks r and 2P - 1 - r: seen through a causal mask."""
    check_cp(check, case, dtype)


@pytest.mark.clause("cp.ring")
@given(case=cp_cases(schemes=("ring",)))
@example(case=EXAMPLES[1].with_(scheme="ring"))
@example(case=CpCase(world_size=3, shard_len=5, scheme="ring", seed=7, h_q=3, h_kv=1))
def test_ring(check, dtype, case):
    """P steps of K/V around the ring, partials merged by LSE: sdpa's result."""
    check_cp(check, case, dtype)


@pytest.mark.clause("cp.causal.pairs")
@given(case=cp_cases(causal=True, min_world=2))
@example(case=CpCase(world_size=4, shard_len=4, layout="contiguous", causal="top_left", seed=9))
@example(case=CpCase(world_size=4, shard_len=4, layout="zigzag", causal="top_left", seed=9))
@example(case=CpCase(world_size=2, shard_len=2, layout="zigzag", causal="top_left", seed=1))
def test_causal_pairs(check, dtype, case):
    """Causal over P = 2 to 4 ranks: full, skipped and diagonal pairs, in either layout."""
    check_cp(check, case, dtype)


@pytest.mark.clause("cp.lengths")
@given(case=cp_cases(lengths=True, poison=True, min_world=2))
@example(case=CpCase(world_size=4, shard_len=4, layout="contiguous", seq_lens=(6,), poison="nan"))
@example(case=CpCase(world_size=4, shard_len=4, layout="zigzag", seq_lens=(6,), poison="nan", causal="top_left"))
@example(case=CpCase(world_size=2, batch=2, shard_len=4, layout="zigzag", seq_lens=(7, 0), poison="nan"))
@example(case=CpCase(world_size=3, shard_len=2, layout="contiguous", seq_lens=(3,), poison="large"))
@example(case=CpCase(world_size=4, shard_len=2, layout="zigzag", seq_lens=(3,), poison="large", causal="top_left"))
def test_lengths(check, dtype, case):
    """seq_lens at global positions, ending inside a shard or chunk; NaN or 1e4 stored past them;
    padded rows exactly 0 with LSE -inf."""
    out, lse, expected_lse = check_cp(check, case, dtype)
    padded = np.isneginf(expected_lse)
    check.exact(
        np.asarray(out, np.float64)[padded], np.zeros((int(padded.sum()), case.d_v)), what="padded rows", case=case
    )
    check.exact(np.asarray(lse, np.float64)[padded], expected_lse[padded], what="padded rows' lse", case=case)


@pytest.mark.clause("cp.lse")
@given(case=cp_cases())
@example(case=CpCase(world_size=4, shard_len=2, causal="top_left", seed=11))
@example(case=CpCase(world_size=2, shard_len=4, layout="zigzag", causal="top_left", seq_lens=(5,), seed=12))
def test_lse_per_shard(check, dtype, case):
    """The LSE of the whole sequence at each shard's positions, natural log, -inf where padded."""
    check_cp(check, case, dtype)


@pytest.mark.clause("cp.ulysses")
@given(case=cp_cases(schemes=("ulysses",)))
@example(case=CpCase(world_size=2, h_q=8, h_kv=4, shard_len=3, scheme="ulysses", seed=13))
@example(case=CpCase(world_size=2, h_q=4, h_kv=4, shard_len=2, scheme="ulysses", layout="zigzag", causal="top_left"))
def test_ulysses(check, dtype, case):
    """Head groups over the whole sequence per rank, GQA groups kept together: sdpa's result."""
    check_cp(check, case, dtype)


def _rejects(check, case: CpCase, dtype: str, what: str, **changes):
    __tracebackhide__ = True
    case = case.resolved(fit_heads=False)
    if case.world_size > max_world_size():
        decline(f"P = {case.world_size} is beyond the backend's max_world_size {max_world_size()}")
    q, k, v, options, _ = case.inputs(dtype)
    shards = {"q": q, "k": k, "v": v}
    for name in ("q", "k", "v"):
        if name in changes:
            shards[name] = changes.pop(name)(shards[name])
    options.update(changes)
    check.rejects(lambda: call_unguarded("context_parallel", *shards.values(), **options), what=what, case=case)


@pytest.mark.clause("cp")
@pytest.mark.parametrize(
    "mistake", ["no shards (P = 0)", "k with one shard fewer", "seq_lens past N", "unknown layout", "unknown scheme"]
)
def test_rejects(check, dtype, mistake):
    """Arguments that describe no sharded sequence are errors, raised before any rank starts."""
    case = CpCase(world_size=2, shard_len=2, seq_lens=(4,))
    changes: dict = {
        "no shards (P = 0)": dict(q=lambda x: x[:0], k=lambda x: x[:0], v=lambda x: x[:0]),
        "k with one shard fewer": dict(k=lambda x: x[:1]),
        "seq_lens past N": dict(seq_lens=np.array([5], np.int32)),
        "unknown layout": dict(layout="striped"),
        "unknown scheme": dict(scheme="tree"),
    }[mistake]
    _rejects(check, case, dtype, mistake, **changes)


@pytest.mark.clause("cp.layout.zigzag")
def test_zigzag_rejects_odd_shards(check, dtype):
    """Zigzag needs two chunks per shard: an odd C is an error naming the layout."""
    case = CpCase(world_size=2, shard_len=3, layout="contiguous")  # shards cut contiguously, called zigzag
    _rejects(check, case, dtype, "zigzag with C = 3", layout="zigzag")


@pytest.mark.clause("cp.ulysses")
def test_ulysses_rejects_heads_not_divisible(check, dtype):
    """H_kv = 3 over P = 2: a GQA group would be split; an error naming the scheme."""
    if "ulysses" not in declared_schemes():
        decline("the backend does not declare cp.ulysses")
    _rejects(check, CpCase(world_size=2, h_q=6, h_kv=3, shard_len=2, scheme="ulysses"), dtype, "H_kv = 3, P = 2")
