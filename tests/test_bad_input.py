"""Every wrong call gets a clear error (issue 15): bad inputs to every public entry point.

A case names the entry point and the category of its mistake (rank, shape, dtype, type, range,
option, empty, memory) and asserts the exception type and a message fragment naming the argument.
Where the spec defines a result for an edge input (an empty size, NaN, ``num_splits`` above
``N_k``), a defined case checks it. The ``numpy`` backend runs every reference case as well: it
wraps the reference and must reject what the reference rejects. Nothing large is allocated: the
memory cases lower the memory the checks see as available, or ask for more than any machine has.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnspec import load_backend, validation
from attnspec.clauses import REFERENCES
from attnspec.reference import KVCache

NUMPY = load_backend("numpy")
NAN = float("nan")
BIG = 2**17  # N_q = N_k = BIG: float64 scores of 128 GiB from 1 MiB inputs (D = 1)
D_ZERO = "head dim D_qk must be >= 1"


def ones(*shape, dtype=np.float64):
    return np.ones(shape, dtype)


Q, K, V = ones(2, 4, 3, 8), ones(2, 2, 5, 8), ones(2, 2, 5, 6)  # GQA cross-attention
S, SV = ones(2, 2, 5, 8), ones(2, 2, 5, 6)  # self-attention: H_q = H_kv, N_q = N_k
B1 = ones(1, 1, BIG, 1)
NSA = dict(cmp_len=2, cmp_stride=1, sel_len=2, top_n=2)
XL = dict(mem_k=ones(2, 2, 3, 8), mem_v=ones(2, 2, 3, 6))
OUTS, LSES = ones(2, 1, 1, 3, 4), ones(2, 1, 1, 3)  # merge_partials: S = 2 partials
LENS = dict(cache_lens=[5, 5])
GAMMAS = dict(gammas=np.full(2, 0.9))
REL = dict(rel_k=ones(3, 8), rel_v=ones(3, 6))  # shaw, max_relative = 1

# op -> (its other arguments, base arrays (GQA cross- or self-attention), the arrays it takes, D = 0 error)
QKV = {
    "sdpa": ({}, "gqa", "qkv", D_ZERO),
    "flash_forward": (dict(block_q=2, block_k=2), "gqa", "qkv", D_ZERO),
    "split_kv": (dict(num_splits=2), "gqa", "qkv", D_ZERO),
    "decode": (dict(cache_lens=[4, 4]), "gqa", "qkv", D_ZERO),
    "linformer": (dict(e=ones(2, 5), f=ones(2, 5)), "gqa", "qkv", D_ZERO),
    "xl_attention": (XL, "self", "qkv", D_ZERO),
    "xl_recurrent": (dict(segment_len=2, mem_len=2), "self", "qkv", D_ZERO),
    "routed": (dict(centroids=ones(4, 3, 8)), "gqa", "qkv", D_ZERO),
    "routed_assign": (dict(centroids=ones(4, 3, 8)), "gqa", "qk", D_ZERO),
    "lsh": (dict(rotations=ones(2, 8, 2), chunk_len=1), "self", "qv", D_ZERO),
    "lsh_buckets": (dict(rotations=ones(2, 8, 2)), "self", "q", D_ZERO),
    "nsa": (dict(gates=ones(2, 4, 3, 3), window=2, **NSA), "gqa", "qkv", D_ZERO),
    "nsa_select": (NSA, "gqa", "qk", D_ZERO),
    "performer": (dict(projection=ones(4, 8)), "self", "qkv", "D_qk >= 1"),
    "linear_attention": ({}, "self", "qkv", "D_qk >= 1"),
    "efficient_attention": ({}, "self", "qkv", "D_qk >= 1"),
    "shaw": (dict(**REL, max_relative=1), "self", "qkv", D_ZERO),
    "retention": (GAMMAS, "self", "qkv", "D_k >= 1"),
    "sparse": (dict(pattern="chunked", chunk=2), "gqa", "qkv", D_ZERO),
}
BASE = {"gqa": (Q, K, V), "self": (S, S, SV)}


def qkv_cases():
    """The mistakes every ``(q, k, v)`` operation rejects alike; ``qk`` is LSH's shared query-key."""
    for op, (options, base, takes, d_zero) in QKV.items():
        first = "qk" if op.startswith("lsh") else "q"

        def at(q, k, v, options=options, takes=takes):
            return lambda f: f(*(dict(q=q, k=k, v=v)[name] for name in takes), **options)

        q, k, v = BASE[base]
        yield op, "rank", at(q[0], k, v), ValueError, f"{first} must have 4 dimensions"
        yield op, "dtype", at(q.astype(int), k, v), TypeError, f"{first} must be a real floating-point array; got dtype"
        yield op, "type", at(None, k, v), TypeError, f"{first} must be a real floating-point array; got None"
        yield op, "empty", at(q[..., :0], k[..., :0], v), ValueError, d_zero
        if "v" in takes:
            yield op, "shape", at(q, k, v[:, :, :-1]), ValueError, r"v(_cache)? must have"
        elif "k" in takes:
            yield op, "shape", at(q, k[..., :-1], v), ValueError, "k's head dim must equal q's"


def mha(f, x_q=None, x_kv=None, **options):
    weights = dict(w_q=ones(8, 8), w_k=ones(8, 8), w_v=ones(8, 8), w_o=ones(8, 8), num_heads=2)
    return f(ones(1, 3, 8) if x_q is None else x_q, ones(1, 3, 8) if x_kv is None else x_kv, **{**weights, **options})


# (entry, category, call(f), error, message): f is the reference function or the numpy backend's method
# fmt: off
CASES = [
    *qkv_cases(),
    ("sdpa", "range", lambda f: f(Q, K, V, scale=NAN), ValueError, "scale must be finite"),
    ("sdpa", "range", lambda f: f(Q, K, V, softcap=0.0), ValueError, "softcap must be finite and > 0"),
    ("sdpa", "range", lambda f: f(Q, K, V, window=(-2, 0)), ValueError, r"window\[0\] \(left\) must be >= -1"),
    ("sdpa", "range", lambda f: f(Q, K, V, kv_lens=[6, 5]), ValueError, "kv_lens must be <= 5"),
    ("sdpa", "option", lambda f: f(Q, K, V, causal=True), ValueError, "causal must be None, 'top_left'"),
    ("sdpa", "option", lambda f: f(Q, K, V, mask=ones(3, 5)), TypeError, "mask must be a boolean array"),
    ("sdpa", "option", lambda f: f(Q, K, V, bias=np.full((3, 5), NAN)), ValueError, "bias must be finite or -inf"),
    ("sdpa", "shape", lambda f: f(Q[:, :3], K, V), ValueError, r"H_q = 3 \(q.shape\[1\]\) must be a multiple"),
    ("flash_forward", "range", lambda f: f(Q, K, V, block_q=0, block_k=2), ValueError, "block_q must be >= 1"),
    ("flash_forward", "type", lambda f: f(Q, K, V, block_q=2, block_k=1.5), TypeError, "block_k must be an integer"),
    ("split_kv", "range", lambda f: f(Q, K, V, num_splits=0), ValueError, "num_splits must be >= 1"),
    ("split_kv", "type", lambda f: f(Q, K, V, num_splits=True), TypeError, "num_splits must be an integer"),
    ("merge_partials", "rank", lambda f: f(ones(2, 1, 3, 4), ones(2, 1, 3)), ValueError, "outs must have 5 dimensions"),
    ("merge_partials", "shape", lambda f: f(OUTS, LSES[..., :2]), ValueError, "lses must have shape"),
    ("merge_partials", "empty", lambda f: f(OUTS[:0], LSES[:0]), ValueError, r"\(S >= 1\)"),
    ("merge_partials", "range", lambda f: f(OUTS, LSES * NAN), ValueError, "lses must be finite"),
    ("merge_partials", "dtype", lambda f: f(OUTS.astype(int), LSES), TypeError, "outs must be a real"),
    ("merge_partials", "type", lambda f: f(None, LSES), TypeError, r"outs must be a real .*; got None"),
    ("decode", "rank", lambda f: f(Q, K[0], V[0], **LENS), ValueError, "k_cache must have 4 dimensions"),
    ("decode", "type", lambda f: f(Q, None, V, **LENS), TypeError, "k_cache must be a real floating-point"),
    ("decode", "shape", lambda f: f(Q, K, V[:1], **LENS), ValueError, r"differ: .* v_cache \(1,"),
    ("decode", "shape", lambda f: f(Q[..., :7], K, V, **LENS), ValueError, "k_cache's head dim must"),
    ("decode", "range", lambda f: f(Q, K, V, cache_lens=[6, 5]), ValueError, "cache_lens must be <= 5"),
    ("decode", "range", lambda f: f(Q, K, V, cache_lens=[-1, 5]), ValueError, "cache_lens must be >= 0"),
    ("decode", "rank", lambda f: f(Q, K, V, cache_lens=5), ValueError, r"cache_lens must have shape \(2,\)"),
    ("decode", "option", lambda f: f(Q, K, V, **LENS, causal="top_left"), ValueError, r"sets \['causal'\]"),
    ("sinusoidal", "range", lambda f: f(np.arange(4), 3, layout="concat"), ValueError, "dim must be even"),
    ("sinusoidal", "range", lambda f: f(np.array([-1, 2]), 4, layout="concat"), ValueError, "positions must be >= 0"),
    ("sinusoidal", "rank", lambda f: f(np.zeros((2, 2), int), 4, layout="concat"), ValueError, "positions must be 1-D"),
    ("sinusoidal", "dtype", lambda f: f(np.arange(4.0), 4, layout="concat"), TypeError, "positions must be an integer"),
    ("sinusoidal", "option", lambda f: f(np.arange(4), 4, layout="bogus"), ValueError, "layout must be one of"),
    ("learned", "range", lambda f: f(ones(4, 3), np.array([4])), ValueError, "positions must be <= 3"),
    ("learned", "rank", lambda f: f(ones(4), np.array([0])), ValueError, "table must have 2 dimensions"),
    ("learned", "type", lambda f: f(None, np.array([0])), TypeError, "table must be a real floating-point"),
    ("alibi_slopes", "range", lambda f: f(0), ValueError, "num_heads must be >= 1"),
    ("alibi_slopes", "type", lambda f: f(2.0), TypeError, "num_heads must be an integer"),
    ("alibi_bias", "rank", lambda f: f(ones(2, 2), 3, 3), ValueError, "slopes must have 1 dimensions"),
    ("alibi_bias", "range", lambda f: f(ones(2), -1, 3), ValueError, "n_q must be >= 0"),
    ("alibi_bias", "option", lambda f: f(ones(2), 3, 3, form="left"), ValueError, "form must be one of"),
    ("rope", "rank", lambda f: f(ones(2, 3, 8), np.arange(3)), ValueError, "x must have 4 dimensions"),
    ("rope", "range", lambda f: f(ones(1, 2, 3, 8), np.arange(3), rotary_dim=3), ValueError, "rotary_dim must be even"),
    ("rope", "shape", lambda f: f(ones(1, 2, 3, 8), np.arange(4)), ValueError, r"positions must have shape \(N,\)"),
    ("rope", "empty", lambda f: f(ones(1, 2, 3, 0), np.arange(3)), ValueError, "rotary_dim must be even"),
    ("rope", "dtype", lambda f: f(ones(1, 2, 3, 8, dtype=int), np.arange(3)), TypeError, "x must be a real"),
    ("t5_bucket", "range", lambda f: f(np.arange(3), num_buckets=1), ValueError, "num_buckets must be >= 2"),
    ("t5_bucket", "type", lambda f: f(np.arange(3), bidirectional=1), TypeError, "bidirectional must be a bool"),
    ("t5_bucket", "dtype", lambda f: f(np.arange(3.0)), TypeError, "relative_position must be an integer array"),
    ("t5_bias", "shape", lambda f: f(ones(7, 2), np.arange(3), np.arange(3)), ValueError, "table must have shape"),
    ("t5_bias", "rank", lambda f: f(ones(32, 2), np.zeros((2, 2), int), np.arange(3)), ValueError, "q_positions must"),
    ("shaw", "range", lambda f: f(S, S, SV, **REL, max_relative=-1), ValueError, "max_relative must be >= 0"),
    ("shaw", "shape", lambda f: f(S, S, SV, rel_k=ones(5, 8), rel_v=ones(3, 6), max_relative=1), ValueError, "rel_k"),
    ("linear_attention", "option", lambda f: f(S, S, SV, feature_map="softmax"), ValueError, "feature_map must be"),
    ("linear_attention", "range", lambda f: f(S, S, SV, form="chunked", chunk_size=0), ValueError, "chunk_size must"),
    ("linear_attention", "range", lambda f: f(S, S, SV, eps=-1.0), ValueError, "eps must be >= 0"),
    ("linear_attention", "shape", lambda f: f(S, S, SV, initial_state=ones(2, 2, 8, 5)), ValueError, "initial_state"),
    ("linear_attention", "type", lambda f: f(S, S, SV, causal="yes"), TypeError, "causal must be a bool"),
    ("performer", "shape", lambda f: f(S, S, SV, projection=ones(4, 7)), ValueError, "projection must have shape"),
    ("performer", "range", lambda f: f(S, S, SV, projection=ones(4, 8) * NAN), ValueError, "projection must be finite"),
    ("performer_features", "rank", lambda f: f(np.float64(1.0), ones(4, 8)), ValueError, "x must have at least"),
    ("performer_features", "type", lambda f: f(None, ones(4, 8)), TypeError, "x must be a real floating-point array"),
    ("orthogonal_projection", "shape", lambda f: f(ones(2, 4, 4), ones(4)), ValueError, "gaussian_blocks must"),
    ("orthogonal_projection", "range", lambda f: f(np.eye(4)[None], -ones(4)), ValueError, "norms must be finite"),
    ("orthogonal_projection", "empty", lambda f: f(ones(0, 4, 4), ones(0)), ValueError, "gaussian_blocks must"),
    ("retention", "range", lambda f: f(S, S, SV, gammas=np.array([1.5, 0.5])), ValueError, "gammas must lie in"),
    ("retention", "shape", lambda f: f(S, S, SV, gammas=np.full(3, 0.9)), ValueError, r"gammas must have shape \(H,\)"),
    ("retention", "dtype", lambda f: f(S, S, SV, gammas=np.full(2, 0.9, np.float16)), TypeError, "gammas .*float16"),
    ("retention", "option", lambda f: f(S, S, SV, **GAMMAS, form="fast"), ValueError, "form must be"),
    ("retention", "type", lambda f: f(S, S, SV, **GAMMAS, return_state=1), TypeError, "return_state"),
    ("retention_decays", "range", lambda f: f(0), ValueError, "num_heads must be >= 1"),
    ("retention_decays", "type", lambda f: f("8"), TypeError, "num_heads must be an integer"),
    ("routed", "shape", lambda f: f(Q, K, V, centroids=ones(4, 3, 7)), ValueError, "centroids must have shape"),
    ("routed", "range", lambda f: f(Q, K, V, centroids=ones(4, 3, 8) * 0), ValueError, "centroids must be finite"),
    ("routed_assign", "type", lambda f: f(Q, K, centroids=None), TypeError, "centroids must be a real"),
    ("lsh", "range", lambda f: f(S, SV, rotations=ones(2, 8, 2), chunk_len=2), ValueError, "chunk_len must divide"),
    ("lsh", "shape", lambda f: f(S, SV, rotations=ones(2, 7, 2), chunk_len=1), ValueError, "rotations must have shape"),
    ("lsh", "type", lambda f: f(S, SV, rotations=ones(2, 8, 2), chunk_len=1, causal=None), TypeError, "causal must"),
    ("lsh_buckets", "rank", lambda f: f(S, rotations=ones(8, 2)), ValueError, "rotations must have 3 dimensions"),
    ("nsa", "range", lambda f: f(Q, K, V, gates=ones(2, 4, 3, 3), window=0, **NSA), ValueError, "window must be >= 1"),
    ("nsa", "shape", lambda f: f(Q, K, V, gates=ones(2, 4, 3, 2), window=2, **NSA), ValueError, "gates must be finite"),
    ("nsa_select", "range", lambda f: f(Q, K, **{**NSA, "sel_len": 1}), ValueError, "cmp_len must be <= sel_len"),
    ("nsa_select", "type", lambda f: f(Q, K, **{**NSA, "top_n": 2.0}), TypeError, "top_n must be an integer"),
    ("xl_recurrent", "range", lambda f: f(S, S, SV, segment_len=0, mem_len=1), ValueError, "segment_len must be >= 1"),
    ("xl_attention", "shape", lambda f: f(S, S, SV, **{**XL, "mem_k": ones(2, 2, 3, 7)}), ValueError, "mem_k must"),
    ("linformer", "shape", lambda f: f(Q, K, V, e=ones(2, 4), f=ones(2, 4)), ValueError, "e must have N = 5 columns"),
    ("sparse", "option", lambda f: f(Q, K, V, pattern="nope"), ValueError, "pattern must be one of"),
    ("sparse", "option", lambda f: f(Q, K, V, pattern="chunked", chunk=2, stride=3), TypeError, r"no parameter\(s\)"),
    ("sparse", "shape", lambda f: f(ones(2, 4, 6, 8), K, V, pattern="chunked", chunk=2), ValueError, "exceeds N_k = 5"),
    ("sparse", "dtype", lambda f: f(Q, K, V, pattern="block_sparse", layout=ones(1, 3, 3), block_q=2, block_k=2),
     TypeError, "layout must be a boolean"),
    ("sparse_mask", "range", lambda f: f("chunked", -1, 4, chunk=2), ValueError, "n_q must be >= 0"),
    ("sparse_mask", "type", lambda f: f("chunked", 4.0, 4, chunk=2), TypeError, "n_q must be an integer"),
    ("mha", "rank", lambda f: mha(f, x_q=ones(3, 8)), ValueError, "x_q must have 3 dimensions"),
    ("mha", "shape", lambda f: mha(f, x_kv=ones(1, 3, 7)), ValueError, "x_kv must be"),
    ("mha", "range", lambda f: mha(f, num_heads=0), ValueError, "num_heads must be >= 1"),
    ("mha", "range", lambda f: mha(f, num_heads=4, num_kv_heads=3), ValueError, "num_heads = 4 must be a multiple"),
    ("mha", "dtype", lambda f: mha(f, x_q=ones(1, 3, 8, dtype=int)), TypeError, "x_q must be a real floating-point"),
    ("mha", "type", lambda f: mha(f, w_q=None), TypeError, "w_q must be a real floating-point array; got None"),
    ("mha", "option", lambda f: mha(f, return_lse=True), ValueError, "mha takes no return_lse"),
]

# (entry, call(f), message): with 1 GiB available each call needs far more, and is refused before it allocates
MEMORY = [
    ("sdpa", lambda f: f(B1, B1, B1), r"scores \(B, H_q, N_q, N_k\) = \(1, 1, 131072, 131072\)"),
    ("split_kv", lambda f: f(B1, B1, B1, num_splits=2), r"scores \(B, H_q, N_q, N_k\) = \(1, 1, 131072, 65536\)"),
    ("decode", lambda f: f(B1, B1, B1, cache_lens=[BIG]), r"scores \(B, H_q, N_q, N_k\)"),
    ("flash_forward", lambda f: f(B1, B1, B1, block_q=BIG, block_k=BIG), r"score tile \(B, H_q, block_q, block_k\)"),
    ("xl_attention", lambda f: f(B1, B1, B1, mem_k=ones(1, 1, 0, 1), mem_v=ones(1, 1, 0, 1)), "scores"),
    ("linear_attention", lambda f: f(B1, B1, B1), r"weights \(B, H, N_q, N_k\)"),
    ("retention", lambda f: f(B1, B1, B1, gammas=np.array([0.5])), r"scores \(B, H, N, N\)"),
    ("shaw", lambda f: f(B1, B1, B1, rel_k=ones(3, 1), rel_v=ones(3, 1), max_relative=1), r"scores \(B, H, N_q, N_k\)"),
    ("routed", lambda f: f(B1, B1, B1, centroids=ones(1, 1, 1)), r"same-cluster mask \(B, H_q, N_q, N_k\)"),
    ("lsh", lambda f: f(B1, B1, rotations=ones(1, 1, 1), chunk_len=1), r"visible sets \(B, H, n_rounds, N, N\)"),
    ("nsa", lambda f: f(B1, B1, B1, gates=ones(1, 1, BIG, 3), window=1, **NSA), r"scores \(B, H_q, N_q, N_k\)"),
    ("sinusoidal", lambda f: f(np.arange(4), 2**30, layout="concat"), r"encoding \(len\(positions\), dim\)"),
    ("alibi_slopes", lambda f: f(2**40), r"slopes \(num_heads,\)"),
    ("alibi_bias", lambda f: f(ones(1), BIG, BIG), r"bias \(H, n_q, n_k\)"),
    ("t5_bias", lambda f: f(ones(32, 1), np.arange(BIG), np.arange(BIG)), r"bias \(H, N_q, N_k\)"),
    ("retention_decays", lambda f: f(2**40), r"decays \(num_heads,\)"),
    ("sparse_mask", lambda f: f("chunked", BIG, BIG, chunk=2), r"table \(B_p, H_p, n_q, n_k\)"),
]
# fmt: on


def close(got, want):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def agree(results):
    close(*results)


def has_shape(shape):
    def check(x):
        assert x.shape == shape

    return check


def fully_masked(result):
    out, lse = result
    assert (out == 0).all() and np.isneginf(lse).all()


def nan_row_only(out):
    """A NaN query propagates to its own output row, and no further (sdpa's rows are independent)."""
    assert np.isnan(out[:, :, 0]).all() and np.isfinite(out[:, :, 1:]).all()


RNG = np.random.default_rng(0)
QR, KR, VR = RNG.normal(size=Q.shape), RNG.normal(size=K.shape), RNG.normal(size=V.shape)
QKV_R = (QR, KR, VR)
Q_NAN = np.where(np.arange(3)[:, None] == 0, NAN, QR)
MEAN_V = np.broadcast_to(np.repeat(VR.mean(axis=2, keepdims=True), 2, axis=1), (2, 4, 3, 6))  # scale 0: uniform

# (entry, category, call(f), check(result)): what the spec defines for edge inputs
# fmt: off
DEFINED = [
    ("sdpa", "empty", lambda f: f(Q, K[:, :, :0], V[:, :, :0], return_lse=True), fully_masked),
    ("sdpa", "empty", lambda f: f(Q[:, :, :0], K, V), has_shape((2, 4, 0, 6))),
    ("sdpa", "empty", lambda f: f(Q[:0], K[:0], V[:0]), has_shape((0, 4, 3, 6))),
    ("sdpa", "nonfinite", lambda f: f(Q_NAN, KR, VR), nan_row_only),
    ("sdpa", "range", lambda f: f(QR, KR, VR, scale=0.0), lambda out: close([out], [MEAN_V])),
    ("split_kv", "range", lambda f: (f(*QKV_R, num_splits=7), f(*QKV_R, num_splits=1)), agree),
    ("split_kv", "range", lambda f: (f(*QKV_R, num_splits=10**9), f(*QKV_R, num_splits=1)), agree),
    ("decode", "range", lambda f: (f(*QKV_R, cache_lens=[5, 3], num_splits=10**9), f(*QKV_R, cache_lens=[5, 3])),
     agree),
    ("merge_partials", "nonfinite", lambda f: f(OUTS, LSES * -np.inf), fully_masked),
    ("alibi_bias", "empty", lambda f: f(ones(2), 0, 0), has_shape((2, 0, 0))),
    ("sinusoidal", "empty", lambda f: f(np.arange(0), 4, layout="concat"), has_shape((0, 4))),
]
# fmt: on


def on(backend: str, op: str):
    return REFERENCES[op] if backend == "reference" else getattr(NUMPY, op)


def params(table, category: str | None = None):
    """A ``pytest.param`` per backend and row, with the id ``backend.entry-category-row``."""
    return [
        pytest.param(backend, *row, id=f"{backend}.{row[0]}-{category or row[1]}-{i}")
        for backend in ("reference", "numpy")
        for i, row in enumerate(table)
    ]


@pytest.mark.parametrize("backend, op, category, call, error, message", params(CASES))
def test_bad_input_is_a_clear_error(backend, op, category, call, error, message):
    with pytest.raises(error, match=message):
        call(on(backend, op))


@pytest.mark.parametrize("backend, op, call, message", params(MEMORY, "memory"))
def test_too_large_is_refused_before_allocating(backend, op, call, message, monkeypatch):
    monkeypatch.setattr(validation, "available_memory", lambda: 2**30)
    with pytest.raises(validation.TooLarge, match=rf"needs at least .* GiB .*{message}.*; 1.0 GiB is available"):
        call(on(backend, op))


@pytest.mark.parametrize("backend, op, category, call, check", params(DEFINED))
def test_edge_input_has_the_defined_result(backend, op, category, call, check):
    check(call(on(backend, op)))


K1, V1, Q1 = ones(2, 2, 1, 8), ones(2, 2, 1, 6), ones(2, 4, 1, 8)  # one new token's key, value and queries


def cache(n: int = 0) -> KVCache:
    kv = KVCache(batch=2, kv_heads=2, capacity=6, d_qk=8, d_v=6)
    kv.append(ones(2, 2, n, 8), ones(2, 2, n, 6))
    return kv


# fmt: off
KV_CASES = [  # KVCache is the reference's only (a backend decodes against caches it is given)
    ("KVCache", "range", lambda: KVCache(0, 1, 4, 2, 2), ValueError, "batch must be >= 1"),
    ("KVCache", "type", lambda: KVCache(1, 1, 4.0, 2, 2), TypeError, "capacity must be an integer"),
    ("KVCache", "memory", lambda: KVCache(1000, 64, 10**7, 128, 128), validation.TooLarge, r"KVCache needs at least"),
    ("KVCache.append", "rank", lambda: cache().append(ones(2, 2, 8), ones(2, 2, 6)), ValueError, "k_new must have"),
    ("KVCache.append", "shape", lambda: cache().append(K1, ones(2, 2, 2, 6)), ValueError, "v_new must"),
    ("KVCache.append", "dtype", lambda: cache().append(K1.astype(int), V1), TypeError, "k_new must be a real"),
    ("KVCache.append", "type", lambda: cache().append(None, V1), TypeError, "k_new must be a real"),
    ("KVCache.append", "range", lambda: cache().append(ones(2, 2, 7, 8), ones(2, 2, 7, 6)), ValueError, "capacity 6"),
    ("KVCache.attend", "rank", lambda: cache(2).attend(ones(4, 1, 8)), ValueError, "q must have 4 dimensions"),
    ("KVCache.attend", "shape", lambda: cache(2).attend(Q1[..., :7]), ValueError, "k_cache's head dim must equal q's"),
    ("KVCache.attend", "option", lambda: cache(2).attend(Q1, causal="top_left"), ValueError, "decode sets"),
]
# fmt: on


@pytest.mark.parametrize(
    "entry, category, call, error, message", [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in KV_CASES]
)
def test_kv_cache_rejects(entry, category, call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_kv_cache_append_nothing_is_defined():
    kv = cache(2)
    kv.append(ones(2, 2, 0, 8), ones(2, 2, 0, 6))
    assert kv.lens.tolist() == [2, 2]


# The numpy backend declares float64 and float32: it refuses the others, naming the argument, for every
# operation that takes a floating-point array (the first one of each call is in an undeclared dtype).
HALF = {
    **{op: lambda f, op=op: qkv_call(f, op, np.float16) for op in QKV},
    "merge_partials": lambda f: f(OUTS.astype(np.float16), LSES),
    "mha": lambda f: mha(f, x_q=ones(1, 3, 8, dtype=np.float16)),
    "rope": lambda f: f(ones(1, 2, 3, 8, dtype=np.float16), np.arange(3)),
    "learned": lambda f: f(ones(4, 3, dtype=np.float16), np.arange(2)),
    "t5_bias": lambda f: f(ones(32, 2, dtype=np.float16), np.arange(3), np.arange(3)),
    "alibi_bias": lambda f: f(ones(2, dtype=np.float16), 3, 3),
    "performer_features": lambda f: f(ones(3, 8, dtype=np.float16), ones(4, 8)),
    "orthogonal_projection": lambda f: f(ones(1, 4, 4, dtype=np.float16), ones(4)),
}


def qkv_call(f, op: str, dtype):
    options, base, takes, _ = QKV[op]
    arrays = dict(zip("qkv", (x.astype(dtype) for x in BASE[base]), strict=True))
    return f(*(arrays[name] for name in takes), **options)


@pytest.mark.parametrize("op, call", [pytest.param(op, call, id=f"numpy.{op}-dtype") for op, call in HALF.items()])
def test_numpy_backend_refuses_undeclared_dtypes(op, call):
    with pytest.raises(TypeError, match=r"has dtype float16, which the numpy backend does not declare"):
        call(getattr(NUMPY, op))


def test_numpy_backend_refuses_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with pytest.raises(TypeError, match="q has dtype bfloat16, which the numpy backend does not declare"):
        NUMPY.sdpa(Q.astype(ml_dtypes.bfloat16), K, V)


def test_numpy_backend_converts_lists_as_the_reference_does():
    """Lists are converted, not refused: the result is the reference's, in float64."""
    out = NUMPY.sdpa(QR.tolist(), KR.tolist(), VR.tolist())
    assert out.dtype == np.float64
    close([out], [REFERENCES["sdpa"](QR, KR, VR)])
