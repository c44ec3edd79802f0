"""The Linformer and Transformer-XL references: bad input names the argument; results agree with
formulas written out independently here, in float64 to ~1e-12."""

from __future__ import annotations

import numpy as np
import pytest

from attnspec import reference
from attnspec.reference.lowrank import linformer, xl_attention, xl_band, xl_recurrent

rng = np.random.default_rng(1)
Q = rng.standard_normal((2, 4, 7, 8))
K = rng.standard_normal((2, 2, 11, 8))
V = rng.standard_normal((2, 2, 11, 5))
E, F = rng.standard_normal((2, 3, 11)) / np.sqrt(11)
MK, MV = rng.standard_normal((2, 2, 4, 8)), rng.standard_normal((2, 2, 4, 5))
SEG_K, SEG_V = K[:, :, :7], V[:, :, :7]


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0.0))))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: linformer(Q, K, V, e=E[:, :10], f=F[:, :10]), ValueError, r"e must have N = 11 columns"),
        (lambda: linformer(Q, K, V, e=E, f=F[:2]), ValueError, r"f must have e's shape \(3, 11\)"),
        (
            lambda: linformer(Q, K, V, e=np.stack([E] * 3), f=np.stack([F] * 3)),
            ValueError,
            r"a per-head e must have H_kv = 2 projections",
        ),
        (lambda: linformer(Q, K, V, e=E[:0], f=F[:0]), ValueError, "e must project to k_proj >= 1"),
        (lambda: linformer(Q, K, V, e=E[0], f=F[0]), ValueError, r"e must be \(k_proj, N\) or \(H_kv, k_proj, N\)"),
        (lambda: linformer(Q, K, V, e=E.astype(int), f=F), TypeError, "e must be a real floating-point array"),
        (lambda: linformer(Q, K[:, :, :0], V[:, :, :0], e=E[:, :0], f=F[:, :0]), ValueError, "k must hold N >= 1"),
        (lambda: linformer(Q, K, V, e=E, f=F, causal="top_left"), TypeError, "causal"),
        (
            lambda: xl_attention(Q, SEG_K, SEG_V, mem_k=MK, mem_v=MV[:, :, :3]),
            ValueError,
            r"mem_v must have shape \(B, H_kv, M, D_v\) = \(2, 2, 4, 5\), the same memory length M = 4",
        ),
        (
            lambda: xl_attention(Q, SEG_K, SEG_V, mem_k=MK[..., :6], mem_v=MV),
            ValueError,
            r"mem_k must have shape \(B, H_kv, M, D_qk\) = \(2, 2, M, 8\)",
        ),
        (lambda: xl_attention(Q, SEG_K, SEG_V, mem_k=MK[0], mem_v=MV), ValueError, "mem_k must have 4 dimensions"),
        (lambda: xl_attention(Q, K, V, mem_k=MK, mem_v=MV), ValueError, r"q and k must cover the same segment"),
        (lambda: xl_recurrent(Q, SEG_K, SEG_V, segment_len=0, mem_len=2), ValueError, "segment_len must be >= 1"),
        (lambda: xl_recurrent(Q, SEG_K, SEG_V, segment_len=3, mem_len=-1), ValueError, "mem_len must be >= 0"),
        (
            lambda: xl_recurrent(Q, SEG_K, SEG_V, segment_len=2.5, mem_len=1),
            TypeError,
            "segment_len must be an integer",
        ),
        (lambda: xl_recurrent(Q, K, V, segment_len=3, mem_len=1), ValueError, "q and k must cover the same sequence"),
    ],
)
def test_rejects(call, error, message):
    with pytest.raises(error, match=message):
        call()


def softmax_attention(q, k, v, scale):
    """One head, written out: softmax over the rows of ``scale q k^T``, then the values."""
    s = scale * q @ k.T
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def test_linformer_equals_per_head_formula():
    per_head_e, per_head_f = np.stack([E, E[::-1]]), np.stack([F, -F])
    for e, f in ((E, F), (per_head_e, per_head_f)):
        out = linformer(Q, K, V, e=e, f=f, scale=0.4)
        for b in range(2):
            for h in range(4):
                g = h // 2  # query heads 0, 1 read key/value head 0; 2, 3 read head 1
                eh, fh = (e, f) if e.ndim == 2 else (e[g], f[g])
                close(out[b, h], softmax_attention(Q[b, h], eh @ K[b, g], fh @ V[b, g], 0.4))


def test_linformer_with_identity_or_permutation_is_sdpa():
    dense = reference.sdpa(Q, K, V)
    close(linformer(Q, K, V, e=np.eye(11), f=np.eye(11)), dense)
    perm = np.eye(11)[rng.permutation(11)]
    close(linformer(Q, K, V, e=perm, f=perm), dense)


def test_xl_attention_sees_all_memory_and_the_causal_segment():
    out = xl_attention(Q, SEG_K, SEG_V, mem_k=MK, mem_v=MV, scale=0.3)
    keys, values = np.concatenate([MK, SEG_K], axis=2), np.concatenate([MV, SEG_V], axis=2)
    for i in range(7):  # query i: the 4 memory tokens and segment tokens 0 .. i
        close(
            out[0, 1, i],
            softmax_attention(Q[0, 1, i : i + 1], keys[0, 0, : 4 + i + 1], values[0, 0, : 4 + i + 1], 0.3)[0],
        )
    empty = xl_attention(Q, SEG_K, SEG_V, mem_k=MK[:, :, :0], mem_v=MV[:, :, :0])
    close(empty, reference.sdpa(Q, SEG_K, SEG_V, causal="top_left"))


def test_xl_band_by_hand():
    # N = 7, L = 3, M = 2: segments {0,1,2} {3,4,5} {6}; memories {} {1,2} {4,5}.
    expected = np.zeros((7, 7), dtype=bool)
    for i, lo in zip(range(7), (0, 0, 0, 1, 1, 1, 4), strict=True):
        expected[i, lo : i + 1] = True
    np.testing.assert_array_equal(xl_band(7, 3, 2), expected)


@pytest.mark.parametrize("segment_len, mem_len", [(1, 0), (1, 3), (3, 0), (3, 2), (3, 5), (2, 9), (7, 4), (9, 0)])
def test_xl_recurrent_equals_the_band(segment_len, mem_len):
    q, k, v = Q, SEG_K, SEG_V
    out = xl_recurrent(q, k, v, segment_len=segment_len, mem_len=mem_len)
    close(out, reference.sdpa(q, k, v, mask=xl_band(7, segment_len, mem_len)))
    if segment_len >= 7:  # one segment: plain causal attention
        close(out, reference.sdpa(q, k, v, causal="top_left"))
