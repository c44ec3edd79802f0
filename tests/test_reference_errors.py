"""Bad input to the reference raises a TypeError or ValueError that names the argument."""

from __future__ import annotations

import numpy as np
import pytest

from attnspec import reference

Q, K, V = np.ones((2, 4, 3, 8)), np.ones((2, 2, 5, 8)), np.ones((2, 2, 5, 6))


@pytest.mark.parametrize(
    "args, options, error, message",
    [
        ((Q.astype(int), K, V), {}, TypeError, "q must be a real floating-point array; got dtype int64"),
        ((Q, K, V.astype(complex)), {}, TypeError, "v must be a real floating-point array"),
        ((Q, K.astype(bool), V), {}, TypeError, "k must be a real floating-point array"),
        ((Q[0], K, V), {}, ValueError, r"q must have 4 dimensions; got shape \(4, 3, 8\)"),
        ((Q, K[:1], V[:1]), {}, ValueError, "batch sizes differ"),
        ((Q, K[..., :7], V), {}, ValueError, r"k's head dim must equal q's \(D_qk = 8\)"),
        ((Q, K, V[:, :, :4]), {}, ValueError, "v must have k's heads and length"),
        ((Q[:, :3], K, V), {}, ValueError, r"H_q = 3 \(q.shape\[1\]\) must be a multiple of H_kv = 2"),
        (
            (Q, K, V),
            {"causal": True},
            ValueError,
            "causal must be None, 'top_left' or 'bottom_right'; a bool is ambiguous",
        ),
        ((Q, K, V), {"causal": "lower"}, ValueError, "causal must be one of"),
        ((Q, K, V), {"window": (-2, 0)}, ValueError, r"window\[0\] \(left\) must be >= -1; got -2"),
        ((Q, K, V), {"window": (1.5, 0)}, TypeError, r"window\[0\] \(left\) must be an integer"),
        ((Q, K, V), {"window": 3}, ValueError, r"window must be a pair \(left, right\)"),
        (
            (Q, K, V),
            {"is_causal": True},
            TypeError,
            r"sdpa got unknown option\(s\) \['is_causal'\]; the options are scale, causal",
        ),
        ((Q, K, V), {"softcap": 0.0}, ValueError, "softcap must be finite and > 0; got 0.0"),
        ((Q, K, V), {"softcap": -1.0}, ValueError, "softcap must be finite and > 0"),
        ((Q, K, V), {"softcap": float("nan")}, ValueError, "softcap must be finite and > 0"),
        ((Q, K, V), {"scale": float("inf")}, ValueError, "scale must be finite"),
        ((Q, K, V), {"scale": "0.5"}, TypeError, "scale must be a real number"),
        (
            (Q, K, V),
            {"q_lens": np.array([1.0, np.nan])},
            TypeError,
            "q_lens must be an integer array; got dtype float64 containing NaN",
        ),
        ((Q, K, V), {"kv_lens": np.array([1, 6])}, ValueError, "kv_lens must be <= 5; got maximum 6"),
        ((Q, K, V), {"kv_lens": np.array([-1, 2])}, ValueError, "kv_lens must be >= 0"),
        ((Q, K, V), {"q_lens": np.array([1, 2, 3])}, ValueError, r"q_lens must have shape \(2,\)"),
        ((Q, K, V), {"mask": np.ones((2, 1, 3, 5))}, TypeError, "mask must be a boolean array"),
        (
            (Q, K, V),
            {"mask": np.ones((2, 1, 3, 4), bool)},
            ValueError,
            r"mask of shape \(2, 1, 3, 4\) is not broadcastable to \(2, 4, 3, 5\)",
        ),
        ((Q, K, V), {"bias": np.full((3, 5), np.nan)}, ValueError, r"bias must be finite or -inf .* got NaN or \+inf"),
        ((Q, K, V), {"bias": np.full((3, 5), np.inf)}, ValueError, r"bias must be finite or -inf"),
        ((Q, K, V), {"bias": np.ones((3, 5), int)}, TypeError, "bias must be a real floating-point array"),
        ((Q, K, V), {"alibi_slopes": np.ones(2)}, ValueError, r"alibi_slopes must have shape \(H_q,\) = \(4,\)"),
    ],
)
def test_sdpa_rejects(args, options, error, message):
    with pytest.raises(error, match=message):
        reference.sdpa(*args, **options)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: reference.flash_forward(Q, K, V, block_q=0, block_k=4), ValueError, "block_q must be >= 1"),
        (lambda: reference.flash_forward(Q, K, V, block_q=2, block_k=1.5), TypeError, "block_k must be an integer"),
        (lambda: reference.split_kv(Q, K, V, num_splits=0), ValueError, "num_splits must be >= 1"),
        (
            lambda: reference.merge_partials(np.ones((2, 1, 1, 3, 4)), np.ones((2, 1, 1, 4))),
            ValueError,
            r"lses must have shape outs.shape\[:4\]",
        ),
        (
            lambda: reference.merge_partials(np.ones((2, 1, 1, 3, 4)), np.full((2, 1, 1, 3), np.nan)),
            ValueError,
            "lses must be finite or -inf",
        ),
        (
            lambda: reference.decode(Q, K, V, cache_lens=np.array([5, 5]), causal="top_left"),
            ValueError,
            r"decode sets \['causal'\] itself",
        ),
        (lambda: reference.decode(Q, K, V, cache_lens=np.array([5, 9])), ValueError, "cache_lens must be <= 5"),
        (lambda: reference.decode(Q, K, V, cache_lens=3), ValueError, r"cache_lens must have shape \(2,\)"),
        (
            lambda: reference.KVCache(batch=1, kv_heads=1, capacity=0, d_qk=2, d_v=2),
            ValueError,
            "capacity must be >= 1",
        ),
        (
            lambda: reference.mha(
                np.ones((1, 3, 8)),
                np.ones((1, 3, 8)),
                w_q=np.ones((8, 6)),
                w_k=np.ones((8, 6)),
                w_v=np.ones((8, 6)),
                w_o=np.ones((6, 8)),
                num_heads=4,
            ),
            ValueError,
            "w_q must be .* divisible by 4 heads",
        ),
        (
            lambda: reference.mha(
                np.ones((1, 3, 8)),
                np.ones((1, 3, 7)),
                w_q=np.ones((8, 8)),
                w_k=np.ones((8, 8)),
                w_v=np.ones((8, 8)),
                w_o=np.ones((8, 8)),
                num_heads=2,
            ),
            ValueError,
            "x_kv must be",
        ),
    ],
)
def test_other_operations_reject(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_kv_cache_overflow_is_an_error():
    cache = reference.KVCache(batch=1, kv_heads=1, capacity=2, d_qk=2, d_v=2)
    cache.append(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="exceeds the cache capacity 2"):
        cache.append(np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2)))
