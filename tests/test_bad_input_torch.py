"""Every wrong call gets a clear error (issue 15): the torch backend's entry points.

The backend takes tensors (its arrays come through ``to_native``): a list or a NumPy array is a
TypeError naming the argument, as are integer tensors and ``q, k, v`` of different dtypes. Its
other errors are the reference's, from the shared checks in :mod:`attnspec.validation`.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attnspec import load_backend  # noqa: E402
from tests.test_bad_input import D_ZERO, KR, NAN, QR, SV, VR, K, Q, S, V, close, fully_masked, ones  # noqa: E402

T = torch.from_numpy
OPTIONS = {
    "sdpa": {},
    "flash_forward": dict(block_q=2, block_k=2),
    "split_kv": dict(num_splits=2),
    "decode": dict(cache_lens=[4, 4]),
    "sparse": dict(pattern="block_sparse", layout=np.ones((1, 3, 3), bool), block_q=2, block_k=2),
}


def qkv_cases():
    """The mistakes every ``(q, k, v)`` method rejects alike; options are NumPy arrays, made tensors at the call."""
    for op, options in OPTIONS.items():
        k_name = "k_cache" if op == "decode" else "k"

        def at(q, k, v, op=op, options=options, **more):
            return lambda tb: getattr(tb, op)(T(q), T(k), T(v), **options, **{n: T(x) for n, x in more.items()})

        def given(q, k, v, op=op, options=options):
            return lambda tb: getattr(tb, op)(q, k, v, **options)

        # fmt: off
        yield op, "type", given(Q, K, V), TypeError, r"q must be a torch.Tensor .*; got ndarray"
        yield op, "type", given(Q.tolist(), K.tolist(), V.tolist()), TypeError, r"q must be a torch.Tensor .*; got list"
        yield op, "rank", at(Q[0], K, V), ValueError, "q must have 4 dimensions"
        yield op, "shape", at(Q, K[..., :7].copy(), V), ValueError, f"{k_name}'s head dim must equal q's"
        yield op, "dtype", at(Q.astype(int), K, V), TypeError, "q must be a floating-point tensor"
        yield op, "dtype", at(Q.astype(np.float32), K, V), TypeError, "must share one dtype"
        yield op, "empty", at(Q[..., :0].copy(), K[..., :0].copy(), V), ValueError, D_ZERO
        if op != "sparse":  # sparse takes no sdpa option but scale
            yield op, "option", at(Q, K, V, mask=ones(3, 5)), TypeError, "mask must be a boolean tensor"
            yield op, "option", at(Q, K, V, bias=ones(3, 5) * NAN), ValueError, "bias must be finite or -inf"
            yield op, "option", at(Q, K, V, alibi_slopes=ones(3)), ValueError, r"alibi_slopes must have shape \(H_q,\)"
        # fmt: on


def merge(tb, outs, lses):
    return tb.merge_partials(*(T(x) if isinstance(x, np.ndarray) else x for x in (outs, lses)))


def linear(tb, q=S, k=S, v=SV, **options):
    return tb.linear_attention(T(q), T(k), T(v), **{"form": "chunked", "chunk_size": 2, **options})


LAYOUT = dict(layout=np.ones((1, 3, 3), bool), block_q=2, block_k=2)
OUTS, LSES = ones(2, 1, 1, 3, 4), ones(2, 1, 1, 3)
LENS = dict(cache_lens=[5, 5])

# fmt: off
CASES = [
    *qkv_cases(),
    ("merge_partials", "rank", lambda tb: merge(tb, OUTS[0], LSES[0]), ValueError, "outs must have 5"),
    ("merge_partials", "shape", lambda tb: merge(tb, OUTS, LSES[..., :2]), ValueError, "lses must have"),
    ("merge_partials", "empty", lambda tb: merge(tb, OUTS[:0], LSES[:0]), ValueError, r"\(S >= 1\)"),
    ("merge_partials", "range", lambda tb: merge(tb, OUTS, LSES * NAN), ValueError, "lses must"),
    ("merge_partials", "type", lambda tb: merge(tb, OUTS.tolist(), LSES), TypeError, "outs must"),
    ("merge_partials", "dtype", lambda tb: merge(tb, OUTS.astype(int), LSES), TypeError, "outs must be a floating"),
    ("decode", "range", lambda tb: tb.decode(T(Q), T(K), T(V), cache_lens=[6, 5]), ValueError, "cache_lens must be <="),
    ("decode", "rank", lambda tb: tb.decode(T(Q), T(K[0]), T(V[0]), **LENS), ValueError, "k_cache must have 4"),
    ("decode", "type", lambda tb: tb.decode(T(Q), None, T(V), **LENS), TypeError, "k_cache must be a torch"),
    ("linear_attention", "type", lambda tb: tb.linear_attention(S, S, SV), TypeError, "q must be a torch.Tensor"),
    ("linear_attention", "dtype", lambda tb: linear(tb, q=S.astype(int)), TypeError, "q must be a floating"),
    ("linear_attention", "dtype", lambda tb: linear(tb, q=S.astype(np.float32)), TypeError, "must share one dtype"),
    ("linear_attention", "type", lambda tb: linear(tb, initial_state=ones(2, 2, 8, 6)), TypeError, "initial_state"),
    ("linear_attention", "range", lambda tb: linear(tb, chunk_size=0), ValueError, "chunk_size must be >= 1"),
    ("linear_attention", "empty", lambda tb: linear(tb, q=S[..., :0], k=S[..., :0]), ValueError, "D_qk >= 1"),
    ("sparse_mask", "shape", lambda tb: tb.sparse_mask("block_sparse", 4, 4, **LAYOUT), ValueError, "layout must have"),
    ("sparse_mask", "range", lambda tb: tb.sparse_mask("block_sparse", 7, 5, **LAYOUT), ValueError, "N_q = 7"),
]
# fmt: on


@pytest.fixture(scope="module")
def backend():
    return load_backend("torch", device="cpu")


@pytest.mark.parametrize(
    "op, category, call, error, message", [pytest.param(*c, id=f"torch.{c[0]}-{c[1]}-{i}") for i, c in enumerate(CASES)]
)
def test_torch_backend_rejects(backend, op, category, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def test_torch_backend_defined_results(backend):
    """Host lengths are accepted (they are read on the host anyway); ``num_splits`` far above ``N_k``
    is defined (clause ``flash.split_kv``) and computes no empty split, on both split-KV paths."""
    q, k, v = T(QR), T(KR), T(VR)
    close([backend.sdpa(q, k, v, kv_lens=np.array([5, 2]))], [backend.sdpa(q, k, v, kv_lens=T(np.array([5, 2])))])
    close(backend.split_kv(q, k, v, num_splits=10**9), backend.split_kv(q, k, v, num_splits=1))  # few rows: parallel
    mask = T(np.ones((3, 5), bool))  # a mask takes the loop over splits
    close(backend.split_kv(q, k, v, num_splits=10**9, mask=mask), backend.split_kv(q, k, v, num_splits=1, mask=mask))
    close(backend.decode(q, k, v, cache_lens=[5, 3], num_splits=10**9), backend.decode(q, k, v, cache_lens=[5, 3]))
    fully_masked([x.numpy() for x in backend.sdpa(q, k[:, :, :0], v[:, :, :0], return_lse=True)])
