"""Conformance of hierarchical and routed attention (spec section :mod:`attnspec.hierarchical`).

Each variant is checked against the reference with the bounds of its equivalent ``sdpa`` problems;
its discrete results (selected blocks, clusters, buckets) exactly, on inputs separated for the
dtype and on deliberate ties; and by properties that follow from the definitions: reduction to
dense attention, permutation, causality, and the attention pattern read through one-hot values.
"""

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from attnspec import reference
from attnspec.conformance.bounds import routed_bounds
from attnspec.conformance.calls import call
from attnspec.conformance.dtypes import numpy_dtype, rounded
from attnspec.conformance.hand_bounds import lsh_bound, nsa_bound
from attnspec.conformance.hierarchical_cases import (
    LshCase,
    NsaCase,
    RoutedCase,
    lsh_cases,
    nsa_cases,
    routed_cases,
    select_call,
)
from attnspec.conformance.probes import POISON
from attnspec.conformance.tolerance import Bound, sdpa_bounds
from attnspec.reference import routed as routed_ref
from attnspec.reference.lsh import LSH
from attnspec.reference.nsa import NSA
from attnspec.reference.sdpa import prepare
from attnspec.reference.sdpa import visible as sdpa_visible


def _twice(bound: Bound) -> Bound:
    return Bound(2 * bound.value, f"twice {bound}")  # both sides of a backend-to-backend comparison err


def _poison(dtype: str):
    return np.asarray(POISON, dtype=numpy_dtype(dtype))


def _check_dense(check, dtype, case, out, q, k, v, options, what):
    """``out`` against the reference ``sdpa`` with ``options``: the dense problem a variant reduces to."""
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, **options)
    check.close(out, ref_out, sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse)[0], what=what, case=case)


# NSA


def _check_nsa(check, dtype, case: NsaCase):
    q, k, v, kwargs = case.inputs(dtype)
    out = call("nsa", q, k, v, **kwargs)
    problem = NSA.build(q, k, v, **kwargs)
    check.close(out, problem.output(), nsa_bound(problem, dtype), what="nsa out", case=case)
    return np.asarray(out, np.float64), problem


def _check_nsa_causal(check, dtype, case: NsaCase, data):
    """Keys and values after position ``p`` hold 1e4: the rows at or before ``p`` are unchanged."""
    assume(case.n_k >= 2)
    case = case.with_(n_q=case.n_k)
    q, k, v, kwargs = case.inputs(dtype)
    p = data.draw(st.integers(0, case.n_k - 2), label="p")
    poisoned_k, poisoned_v = k.copy(), v.copy()
    poisoned_k[:, :, p + 1 :], poisoned_v[:, :, p + 1 :] = _poison(dtype), _poison(dtype)
    out = np.asarray(call("nsa", q, poisoned_k, poisoned_v, **kwargs), np.float64)
    problem = NSA.build(q, k, v, **kwargs)
    check.close(
        out[:, :, : p + 1],
        problem.output()[:, :, : p + 1],
        nsa_bound(problem, dtype),
        what=f"nsa rows 0..{p} with the keys after {p} poisoned",
        case=case,
    )


@pytest.mark.clause("nsa.combine")
@given(case=nsa_cases())
@example(case=NsaCase(h_q=4, h_kv=2, n_q=24, n_k=24, sel_len=8, top_n=2, window=5, init_blocks=1, local_blocks=1))
@example(case=NsaCase(batch=2, h_q=3, h_kv=1, n_q=1, n_k=33, top_n=3, window=8, compress="weights"))
def test_nsa(check, dtype, case):
    """The gated sum of the three branches, for prefill and decode rows (N_q < N_k) and GQA."""
    _check_nsa(check, dtype, case)


@pytest.mark.clause("nsa.combine")
@given(case=nsa_cases(), data=st.data())
def test_nsa_is_causal(check, dtype, case, data):
    _check_nsa_causal(check, dtype, case, data)


@pytest.mark.clause("nsa.compress")
@given(case=nsa_cases(gates="cmp"))
@example(case=NsaCase(n_q=20, n_k=20, d_qk=3, d_v=5, compress="linear", gates="cmp"))
@example(case=NsaCase(n_q=5, n_k=17, cmp_len=8, cmp_stride=4, sel_len=8, gates="cmp"))
def test_nsa_compressed_branch(check, dtype, case):
    """Summaries of complete blocks only; rows before the first complete block are exactly 0."""
    out, problem = _check_nsa(check, dtype, case)
    empty = ~problem.cmp_visible().any(axis=-1)
    check.exact(out[:, :, empty], np.zeros_like(out[:, :, empty]), what="nsa rows with no complete block", case=case)


@pytest.mark.clause("nsa.compress")
@given(case=nsa_cases(gates="cmp"), data=st.data())
def test_nsa_compressed_branch_is_causal(check, dtype, case, data):
    """An incomplete block is invisible: poisoning its later tokens changes nothing before them."""
    _check_nsa_causal(check, dtype, case, data)


def _check_select(check, dtype, case: NsaCase):
    q, k, _, kwargs = case.inputs(dtype)
    got = np.asarray(call("nsa_select", q, k, **select_call(kwargs)))
    expected = NSA.build(q, k, **select_call(kwargs)).select()
    check.exact(got, expected, what="selected blocks", case=case)


@pytest.mark.clause("nsa.select")
@given(case=nsa_cases())
@example(case=NsaCase(h_q=4, h_kv=2, n_q=40, n_k=40, cmp_len=4, cmp_stride=2, sel_len=6, top_n=3, local_blocks=1))
def test_nsa_select(check, dtype, case):
    """Importance summed over the GQA group, forced blocks, ascending indices and -1 padding.

    The cases have no tie at the decision boundary (ties are ``nsa.select.ties``), as have those of
    ``nsa.selected`` and ``nsa.combine``, so a kernel with an unordered top-k may claim this clause.
    """
    _check_select(check, dtype, case)


@pytest.mark.clause("nsa.select.ties")
@given(case=nsa_cases(zero_q=True))
@example(case=NsaCase(n_q=32, n_k=32, cmp_len=4, cmp_stride=4, sel_len=4, top_n=3, zero_q=True))
@example(
    case=NsaCase(
        h_q=3,
        h_kv=1,
        n_q=1,
        n_k=64,
        cmp_len=2,
        cmp_stride=2,
        sel_len=4,
        top_n=4,
        init_blocks=1,
        local_blocks=1,
        zero_q=True,
    )
)
def test_nsa_select_ties_go_to_the_lower_index(check, dtype, case):
    """With q = 0 every visible compressed block is equally probable: the tie rule decides."""
    _check_select(check, dtype, case)


@pytest.mark.clause("nsa.select.ties")
@given(case=nsa_cases(gates="slc", zero_q=True))
@example(
    case=NsaCase(h_q=4, h_kv=2, n_q=24, n_k=24, cmp_len=2, cmp_stride=2, sel_len=2, top_n=3, gates="slc", zero_q=True)
)
def test_nsa_selected_branch_ties_go_to_the_lower_index(check, dtype, case):
    """q = 0 in the fused op: the selected branch is the mean of the values of the blocks the tie rule picks."""
    _check_nsa(check, dtype, case)


@pytest.mark.clause("nsa.select")
@given(case=nsa_cases(all_blocks=True))
def test_nsa_select_takes_every_candidate(check, dtype, case):
    """With top_n covering every block, row i selects blocks 0 .. t_i // sel_len whatever their importance."""
    q, k, _, kwargs = case.inputs(dtype)
    got = np.asarray(call("nsa_select", q, k, **select_call(kwargs)))
    current = (np.arange(case.n_q) + case.n_k - case.n_q) // case.sel_len
    slots = np.arange(case.top_n)
    expected = np.where(slots[None, :] <= current[:, None], slots[None, :], -1)
    check.exact(
        got, np.broadcast_to(expected, (case.batch, case.h_kv, case.n_q, case.top_n)), what="selected blocks", case=case
    )


@pytest.mark.clause("nsa.selected")
@given(case=nsa_cases(gates="slc"))
@example(case=NsaCase(h_q=4, h_kv=2, n_q=30, n_k=30, sel_len=4, top_n=2, gates="slc"))
def test_nsa_selected_branch(check, dtype, case):
    """Tokens of the group's shared blocks, and of the current block only up to the query."""
    _check_nsa(check, dtype, case)


@pytest.mark.clause("nsa.selected")
@given(case=nsa_cases(gates="slc", all_blocks=True))
def test_nsa_every_block_selected_is_causal_dense(check, dtype, case):
    q, k, v, kwargs = case.inputs(dtype)
    out = call("nsa", q, k, v, **kwargs)
    _check_dense(
        check,
        dtype,
        case,
        out,
        q,
        k,
        v,
        {"causal": "bottom_right", "scale": case.scale},
        "nsa out with every block selected",
    )


@pytest.mark.clause("nsa.window")
@given(case=nsa_cases(gates="win"))
@example(case=NsaCase(n_q=9, n_k=9, window=3, gates="win"))
@example(case=NsaCase(n_q=2, n_k=12, window=20, gates="win"))
def test_nsa_window_branch(check, dtype, case):
    """The window branch is sdpa with causal="bottom_right" and window=(w - 1, 0): exactly w keys."""
    q, k, v, kwargs = case.inputs(dtype)
    out = call("nsa", q, k, v, **kwargs)
    options = {"causal": "bottom_right", "window": (case.window - 1, 0), "scale": case.scale}
    _check_dense(check, dtype, case, out, q, k, v, options, "nsa window branch")


# Routed attention


def _check_routed(check, dtype, case: RoutedCase):
    q, k, v, kwargs = case.inputs(dtype)
    out, lse = call("routed", q, k, v, **kwargs)
    ref_out, ref_lse = routed_ref.routed(q, k, v, **kwargs)
    out_bound, lse_bound = routed_bounds(q, k, v, kwargs, dtype, ref_out, ref_lse)
    check.close(out, ref_out, out_bound, what="routed out", case=case)
    check.close(lse, ref_lse, lse_bound, what="routed lse", case=case)
    return (q, k, v, kwargs), np.asarray(out, np.float64), out_bound


@pytest.mark.clause("routed")
@given(case=routed_cases())
@example(case=RoutedCase(h_q=4, h_kv=2, n_q=12, n_k=20, clusters=3, causal="bottom_right"))
@example(case=RoutedCase(n_q=9, n_k=4, clusters=2, causal="top_left"))
def test_routed(check, dtype, case):
    """Same-cluster keys, with GQA, each causal alignment, and N_q above and below N_k."""
    _check_routed(check, dtype, case)


@pytest.mark.clause("routed")
@given(case=routed_cases(clusters=(1,)))
def test_routed_one_cluster_is_dense(check, dtype, case):
    q, k, v, kwargs = case.inputs(dtype)
    out, _ = call("routed", q, k, v, **kwargs)
    _check_dense(
        check, dtype, case, out, q, k, v, {"causal": case.causal, "scale": case.scale}, "routed out with one cluster"
    )


@pytest.mark.clause("routed")
@given(case=routed_cases(causal=(None,), split=True, clusters=(2, 3, 5), min_q=2))
@example(case=RoutedCase(n_q=6, n_k=5, clusters=3, split=True))
def test_routed_rows_without_keys(check, dtype, case):
    """Queries whose cluster holds no key: out exactly 0 and lse -inf (sdpa.fully_masked)."""
    q, k, v, kwargs = case.inputs(dtype)
    out, lse = call("routed", q, k, v, **kwargs)
    empty = np.isneginf(routed_ref.routed(q, k, v, **kwargs)[1])
    assume(empty.any())
    check.exact(
        np.asarray(out, np.float64)[empty],
        np.zeros((int(empty.sum()), case.d_v)),
        what="out of rows without keys",
        case=case,
    )
    check.exact(
        np.asarray(lse, np.float64)[empty],
        np.full(int(empty.sum()), -np.inf),
        what="lse of rows without keys",
        case=case,
    )


@pytest.mark.clause("routed")
@given(case=routed_cases(causal=(None,)), data=st.data())
def test_routed_permutation(check, dtype, case, data):
    """Without causality, permuting keys with values changes nothing; permuting queries permutes rows."""
    (q, k, v, kwargs), out, bound = _check_routed(check, dtype, case)
    perm_q = np.asarray(data.draw(st.permutations(range(case.n_q)), label="perm_q"))
    perm_k = np.asarray(data.draw(st.permutations(range(case.n_k)), label="perm_k"))
    permuted, _ = call("routed", q[:, :, perm_q], k[:, :, perm_k], v[:, :, perm_k], **kwargs)
    check.close(permuted, out[:, :, perm_q], _twice(bound), what="routed out of permuted tokens", case=case)


@pytest.mark.clause("routed")
@given(case=routed_cases(causal=("top_left", "bottom_right")), data=st.data())
def test_routed_is_causal(check, dtype, case, data):
    """Keys and values after position p hold 1e4 (which moves them to other clusters): the rows
    that cannot see past p are unchanged."""
    q, k, v, kwargs = case.inputs(dtype)
    p = data.draw(st.integers(0, case.n_k - 1), label="p")
    poisoned_k, poisoned_v = k.copy(), v.copy()
    poisoned_k[:, :, p + 1 :], poisoned_v[:, :, p + 1 :] = _poison(dtype), _poison(dtype)
    out, _ = call("routed", q, poisoned_k, poisoned_v, **kwargs)
    offset = 0 if case.causal == "top_left" else case.n_k - case.n_q
    rows = np.arange(case.n_q) + offset <= p
    ref_out, ref_lse = routed_ref.routed(q, k, v, **kwargs)
    bound = routed_bounds(q, k, v, kwargs, dtype, ref_out, ref_lse)[0]
    check.close(
        np.asarray(out, np.float64)[:, :, rows],
        ref_out[:, :, rows],
        bound,
        what=f"routed rows that see at most key {p}, later keys poisoned",
        case=case,
    )


@pytest.mark.clause("routed")
@given(case=routed_cases())
def test_routed_hidden_values_do_not_leak(check, dtype, case):
    """Values of keys that no query of the group may see (other clusters, causality) hold 1e4."""
    q, k, v, kwargs = case.inputs(dtype)
    rq, rk, rv, options = routed_ref.problem(q, k, v, **kwargs)
    visible = sdpa_visible(prepare(rq, rk, rv, **options), range(case.n_q), range(case.n_k))
    group = case.h_q // case.h_kv
    unseen = ~np.broadcast_to(visible, (case.batch, case.h_q, case.n_q, case.n_k)).reshape(
        case.batch, case.h_kv, group * case.n_q, case.n_k
    ).any(axis=2)
    poisoned_v = v.copy()
    poisoned_v[unseen] = _poison(dtype)
    out, _ = call("routed", q, k, poisoned_v, **kwargs)
    ref_out, ref_lse = routed_ref.routed(q, k, v, **kwargs)
    check.close(
        out,
        ref_out,
        routed_bounds(q, k, v, kwargs, dtype, ref_out, ref_lse)[0],
        what="routed out with hidden values poisoned",
        case=case,
    )


def _check_assign(check, dtype, case: RoutedCase):
    q, k, _, kwargs = case.inputs(dtype)
    got_q, got_k = call("routed_assign", q, k, centroids=kwargs["centroids"])
    want_q, want_k = routed_ref.routed_assign(q, k, centroids=kwargs["centroids"])
    check.exact(np.asarray(got_q), want_q, what="q_clusters", case=case)
    check.exact(np.asarray(got_k), want_k, what="k_clusters", case=case)


@pytest.mark.clause("routed.assign")
@given(case=routed_cases())
@example(case=RoutedCase(h_q=2, h_kv=1, n_q=7, n_k=9, d_qk=3, clusters=5))
def test_routed_assign(check, dtype, case):
    """The nearest unit centroid, per query head; keys once per query head of their group."""
    _check_assign(check, dtype, case)


@pytest.mark.clause("routed.assign")
@given(case=routed_cases(ties=True, clusters=(2, 3, 5)))
def test_routed_assign_ties_go_to_the_lowest_index(check, dtype, case):
    """Equal centroids 0 and 1, and zero tokens: the lowest index wins."""
    _check_assign(check, dtype, case)


# LSH attention


def _check_lsh(check, dtype, case: LshCase):
    qk, v, kwargs = case.inputs(dtype)
    out = call("lsh", qk, v, **kwargs)
    problem = LSH.build(qk, v, **kwargs)
    bound = lsh_bound(problem, dtype)
    check.close(out, problem.output(), bound, what="lsh out", case=case)
    return (qk, v, kwargs), np.asarray(out, np.float64), bound


def _weights(case: LshCase, dtype: str):
    """``(weights, reference problem)``: values one-hot per key, so ``out[..., i, j]`` is query i's weight on key j."""
    case = case.with_(scale=0.01)  # near-uniform weights: none underflows, so zero means invisible
    qk, _, kwargs = case.inputs(dtype)
    one_hot = rounded(np.broadcast_to(np.eye(case.n), (case.batch, case.heads, case.n, case.n)), dtype)
    out = np.asarray(call("lsh", qk, one_hot, **kwargs), np.float64)
    return out, LSH.build(qk, one_hot, **kwargs), case


def _check_buckets(check, dtype, case: LshCase):
    qk, _, kwargs = case.inputs(dtype)
    got = np.asarray(call("lsh_buckets", qk, rotations=kwargs["rotations"]))
    check.exact(got, LSH.build(qk, rotations=kwargs["rotations"]).buckets(), what="buckets", case=case)


@pytest.mark.clause("lsh.buckets")
@given(case=lsh_cases())
@example(case=LshCase(batch=2, heads=2, n=13, d=3, n_rounds=3, n_buckets=6))
def test_lsh_buckets(check, dtype, case):
    """argmax([y, -y]) per round, y = qk @ rotations[r]."""
    _check_buckets(check, dtype, case)


@pytest.mark.clause("lsh.buckets")
@given(case=lsh_cases(ties=True))
def test_lsh_bucket_ties_go_to_the_lowest_index(check, dtype, case):
    """Rotation columns 0 and 1 equal, and zero tokens: the lowest index wins."""
    _check_buckets(check, dtype, case)


@pytest.mark.clause("lsh.chunks")
@given(case=lsh_cases())
@example(case=LshCase(n=18, chunk_len=3, n_rounds=2, causal=True))
@example(case=LshCase(batch=2, heads=2, n=30, chunk_len=5, n_buckets=2, n_rounds=1))
def test_lsh(check, dtype, case):
    """Sorted chunks, the previous chunk, same bucket, causality: against the reference."""
    _check_lsh(check, dtype, case)


@pytest.mark.clause("lsh.chunks")
@given(case=lsh_cases())
@example(case=LshCase(n=24, chunk_len=4, n_buckets=2, n_rounds=1))
def test_lsh_pattern(check, dtype, case):
    """The keys that carry weight are exactly those of some O_r(i) (or i itself when alone)."""
    weights, problem, case = _weights(case, dtype)
    check.pattern(weights != 0, problem.visible(), what="lsh weights read through one-hot v", case=case)


@pytest.mark.clause("lsh.chunks")
@given(case=lsh_cases(one_bucket=True))
@example(case=LshCase(n=12, chunk_len=12, n_rounds=2, one_bucket=True))
@example(case=LshCase(n=16, chunk_len=4, n_rounds=2, one_bucket=True))
@example(case=LshCase(n=5, chunk_len=1, n_rounds=1, one_bucket=True))
def test_lsh_one_bucket_is_banded(check, dtype, case):
    """One bucket: the sort keeps positions, so token i sees the other tokens of its chunk of
    positions and of the one before, never the last chunk from chunk 0 (causal if asked); one
    chunk is dense attention; a token alone gets its value."""
    qk, v, kwargs = case.inputs(dtype)
    assume((LSH.build(qk, rotations=kwargs["rotations"]).buckets() == 0).all())
    out = call("lsh", qk, v, **kwargs)
    block = np.arange(case.n) // case.chunk_len
    gap = block[:, None] - block[None, :]
    others = ~np.eye(case.n, dtype=bool) & (gap >= 0) & (gap <= 1)
    others &= np.tril(np.ones((case.n, case.n), bool)) if case.causal else True
    mask = others | (np.eye(case.n, dtype=bool) & ~others.any(axis=-1)[:, None])
    x = qk.astype(np.float64)
    keys = x / np.where(np.linalg.norm(x, axis=-1, keepdims=True) > 0, np.linalg.norm(x, axis=-1, keepdims=True), 1)
    ref_out = reference.sdpa(qk, keys, v, mask=mask, scale=case.scale)
    check.close(out, ref_out, lsh_bound(LSH.build(qk, v, **kwargs), dtype), what="lsh out in one bucket", case=case)


@pytest.mark.clause("lsh.chunks")
@given(case=lsh_cases(one_chunk=True, causal=False), data=st.data())
def test_lsh_one_chunk_permutation(check, dtype, case, data):
    """With one chunk and no causality, permuting the sequence permutes the output rows."""
    (qk, v, kwargs), out, bound = _check_lsh(check, dtype, case)
    perm = np.asarray(data.draw(st.permutations(range(case.n)), label="perm"))
    permuted = call("lsh", qk[:, :, perm], v[:, :, perm], **kwargs)
    check.close(permuted, out[:, :, perm], _twice(bound), what="lsh out of the permuted sequence", case=case)


@pytest.mark.clause("lsh.chunks")
@given(case=lsh_cases(causal=True, min_len=2), data=st.data())
def test_lsh_is_causal(check, dtype, case, data):
    """Values after position p hold 1e4 (qk, hence the chunks, unchanged): rows 0..p are unchanged."""
    qk, v, kwargs = case.inputs(dtype)
    p = data.draw(st.integers(0, case.n - 2), label="p")
    poisoned = v.copy()
    poisoned[:, :, p + 1 :] = _poison(dtype)
    out = np.asarray(call("lsh", qk, poisoned, **kwargs), np.float64)
    problem = LSH.build(qk, v, **kwargs)
    check.close(
        out[:, :, : p + 1],
        problem.output()[:, :, : p + 1],
        lsh_bound(problem, dtype),
        what=f"lsh rows 0..{p} with later values poisoned",
        case=case,
    )


@pytest.mark.clause("lsh.self_exclusion")
@given(case=lsh_cases(rounds=(2, 4), top=17))
@example(case=LshCase(n=9, n_buckets=16, chunk_len=3, n_rounds=3))
@example(case=LshCase(n=5, chunk_len=1, causal=True, n_rounds=2))
def test_lsh_self_exclusion(check, dtype, case):
    """Short sequences and many buckets: tokens alone in some rounds, or in all of them."""
    _check_lsh(check, dtype, case)


@pytest.mark.clause("lsh.self_exclusion")
@given(case=lsh_cases(rounds=(1, 4), top=33))
@example(case=LshCase(n=12, n_buckets=8, chunk_len=2, n_rounds=2))
def test_lsh_self_weight(check, dtype, case):
    """A token's weight on itself is nonzero exactly when no round gives it another key."""
    weights, problem, case = _weights(case, dtype)
    alone = problem.alone(problem.others())
    check.pattern(np.diagonal(weights, axis1=-2, axis2=-1) != 0, alone, what="lsh self weights", case=case)


@pytest.mark.clause("lsh.rounds")
@given(case=lsh_cases(rounds=(2, 5)))
@example(case=LshCase(n=32, chunk_len=4, n_buckets=4, n_rounds=3))
@example(case=LshCase(n=8, chunk_len=2, n_buckets=8, n_rounds=3, causal=True))
def test_lsh_rounds(check, dtype, case):
    """Several rounds: attention over the union of their visible sets, a key seen in several rounds
    counted once; the weights sum to one also for a token alone in every round (token 0 under
    causality)."""
    _check_lsh(check, dtype, case)
