"""The ``torch-ring`` and ``torch-ulysses`` backends' own logic: the pair plan, the checks made
before any rank starts, and what a dead or hung worker does to a call (a clear error within the
timeout, then a fresh pool). The conformance of their results is the suite's
(``pytest conformance --backend=torch-ring``); one call per scheme here checks the wiring.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import numpy as np
import pytest

from attnspec import load_backend
from attnspec.contract import Unsupported
from attnspec.reference import cp as reference_cp

torch_cp = pytest.importorskip("attnspec.backends.torch_cp")
pytestmark = pytest.mark.xdist_group("torch_cp")


def covered(calls, q_pos, k_pos, causal: bool) -> np.ndarray:
    """Boolean (C, C): the (query, key) pairs the plan's calls compute, with their masks applied."""
    c = len(q_pos)
    seen = np.zeros((c, c), dtype=int)
    for (q0, q1), (k0, k1), diagonal in calls:
        block = np.ones((q1 - q0, k1 - k0), dtype=int)
        if diagonal:
            block = np.tril(block)
        seen[q0:q1, k0:k1] += block
    return seen


@pytest.mark.parametrize("layout", reference_cp.LAYOUTS)
def test_plan_computes_exactly_the_visible_pairs_once(layout):
    """cp.causal.pairs: every visible pair in exactly one call, no invisible pair, for every
    (rank, owner) of P = 1..5, causal or not."""
    for p, c, causal in itertools.product(range(1, 6), (2, 4, 6), (False, True)):
        pos = reference_cp.positions(layout, p, c)
        runs = torch_cp.runs(layout, c)
        for r, s in itertools.product(range(p), range(p)):
            calls = torch_cp.plan(pos[r], pos[s], runs, causal, r == s)
            visible = (pos[s][None, :] <= pos[r][:, None]) if causal else np.ones((c, c), bool)
            np.testing.assert_array_equal(covered(calls, pos[r], pos[s], causal), visible.astype(int))
            assert len(calls) <= 1 + (layout == "zigzag" and r != s)  # at most one call per step but
            if layout == "zigzag" and causal and r != s:  # zigzag's off-diagonal pairs: half, in one call
                assert len(calls) == 1 and calls[0][0] != calls[0][1] and not calls[0][2]


def test_plan_refuses_runs_that_overlap():
    with pytest.raises(AssertionError, match="overlap"):
        torch_cp.plan(np.array([0, 2]), np.array([1, 3]), [(0, 2)], True, False)


def test_local_lengths_are_the_valid_prefix():
    pos = reference_cp.positions("zigzag", 2, 4)  # rank 0: 0 1 6 7, rank 1: 2 3 4 5
    assert torch_cp._local_lens(pos[0], np.array([0, 1, 6, 7, 8])).tolist() == [0, 1, 2, 3, 4]
    assert torch_cp._local_lens(pos[1], np.array([2, 3, 5, 8])).tolist() == [0, 1, 3, 4]


@pytest.fixture(scope="module")
def ring():
    backend = load_backend("torch-ring:2")
    yield backend
    backend.close()


def shards(p=2, c=4, h_q=4, h_kv=2, seed=0, dtype=np.float64, d_v=5):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((p, 2, h_q, c, 8)).astype(dtype),
        rng.standard_normal((p, 2, h_kv, c, 8)).astype(dtype),
        rng.standard_normal((p, 2, h_kv, c, d_v)).astype(dtype),
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(layout="striped"), ValueError, "layout must be one of"),
        (dict(seq_lens=np.array([9, 1])), ValueError, "seq_lens must be <= 8"),
        (dict(causal=True), ValueError, "causal must be None"),
        (dict(scale=float("inf")), ValueError, "scale must be finite"),
        (dict(q=np.zeros((2, 2, 4, 4, 8), np.int64)), TypeError, "q must be a real floating-point"),
        (dict(k=np.zeros((2, 2, 2, 4, 8), np.float32)), TypeError, "q, k, v must share one dtype"),
        (dict(v=np.zeros((2, 2, 2, 3, 5))), ValueError, "v must have k's heads and length"),
    ],
)
def test_errors_name_the_argument_before_any_rank_starts(kwargs, error, match):
    backend = load_backend("torch-ring:2")
    q, k, v = shards()
    arrays = {"q": q, "k": k, "v": v}
    arrays.update({name: kwargs.pop(name) for name in ("q", "k", "v") if name in kwargs})
    with pytest.raises(error, match=match):
        backend.context_parallel(*arrays.values(), **kwargs)
    assert backend._pool is None  # refused in the calling process


def test_declines_what_it_cannot_run():
    backend = load_backend("torch-ring:2")
    q, k, v = shards(p=3)
    with pytest.raises(Unsupported, match="P = 3 shards: torch-ring:2 has 2 processes"):
        backend.context_parallel(q, k, v)
    with pytest.raises(Unsupported, match="scheme 'ulysses'"):
        backend.context_parallel(*shards(), scheme="ulysses")


def test_variant_is_the_world_size():
    assert load_backend("torch-ring:3").max_world_size == 3
    with pytest.raises(Exception, match="the variant is the number of processes"):
        load_backend("torch-ring:two")


def test_ring_call(ring):
    q, k, v = shards(p=2, c=4)
    lens = np.array([5, 2])
    out, lse = ring.context_parallel(q, k, v, layout="zigzag", causal="top_left", seq_lens=lens)
    ref_out, ref_lse = reference_cp.gathered(q, k, v, layout="zigzag", causal="top_left", seq_lens=lens)
    np.testing.assert_allclose(out, ref_out, atol=1e-13)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    np.testing.assert_allclose(
        np.where(np.isneginf(lse), 0, lse), np.where(np.isneginf(ref_lse), 0, ref_lse), atol=1e-13
    )


def test_ulysses_call():
    backend = load_backend("torch-ulysses:2")
    try:
        q, k, v = shards(p=2, c=3, h_q=8, h_kv=4, dtype=np.float32)
        out, lse = backend.context_parallel(q, k, v, scheme="ulysses", causal="top_left")
        ref_out, ref_lse = reference_cp.gathered(q, k, v, causal="top_left")
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref_out, atol=2e-6)
        np.testing.assert_allclose(lse, ref_lse, atol=2e-6)
    finally:
        backend.close()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_worker_dying_in_a_call_fails_it_and_the_next_call_starts_anew(ring):
    q, k, v = shards()
    ring.context_parallel(q, k, v)
    processes = ring._pool.processes
    os.kill(processes[0].pid, signal.SIGSTOP)  # rank 1 waits for rank 0 in the ring ...
    threading.Timer(1.0, processes[1].kill).start()  # ... and dies there
    with pytest.raises(RuntimeError, match=r"worker rank 1 died \(exit code -9\) during the call"):
        ring.context_parallel(q, k, v)
    assert all(p.poll() is not None for p in processes)  # torn down, the stopped one too
    out, _ = ring.context_parallel(q, k, v)  # a fresh pool
    np.testing.assert_allclose(out, reference_cp.gathered(q, k, v)[0], atol=1e-13)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_hung_worker_fails_the_call_within_the_timeout(ring):
    q, k, v = shards()
    ring.context_parallel(q, k, v)
    os.kill(ring._pool.processes[0].pid, signal.SIGSTOP)
    ring.timeout = 3.0
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"rank\(s\) \[0(, 1)?\] gave no result within 3 s"):
            ring.context_parallel(q, k, v)
        assert time.monotonic() - start < 3.0 + 15.0  # the timeout, and the teardown's kill
    finally:
        ring.timeout = type(ring).timeout
    assert ring._pool is not None and not ring._pool.alive


def test_torch_cp_declines_what_pytorch_cannot_express_before_any_rank_starts():
    backend = load_backend("torch-cp:2")
    q, k, v = shards()  # D_v = 5, D_qk = 8
    with pytest.raises(Unsupported, match="D_v = 5 != D_qk = 8"):
        backend.context_parallel(q, k, v)
    with pytest.raises(Unsupported, match="seq_lens short of N"):
        backend.context_parallel(*shards(c=2, d_v=8), seq_lens=np.array([4, 3]))
    assert backend._pool is None


def test_torch_cp_runs_pytorchs_ring_under_the_zigzag_layout():
    """PyTorch's round-robin load balance is the zigzag layout: the causal result is sdpa's."""
    backend = load_backend("torch-cp:2")
    try:
        q, k, v = shards(c=4, dtype=np.float32, d_v=8)  # D_v = D_qk, as its flash kernels need
        out, lse = backend.context_parallel(q, k, v, layout="zigzag", causal="top_left")
        ref_out, ref_lse = reference_cp.gathered(q, k, v, layout="zigzag", causal="top_left")
        np.testing.assert_allclose(out, ref_out, atol=2e-6)
        np.testing.assert_allclose(lse, ref_lse, atol=2e-6)
    finally:
        backend.close()
