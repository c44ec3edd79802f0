"""A correct FlashAttention-2-style kernel in NumPy, for the project's tests of the tolerance policy.

Float32 scores, an online softmax over 64-key tiles, probabilities rounded to the input dtype
before ``P @ V`` (as FlashAttention does), float32 accumulation, the output rounded at the end.
Its arithmetic differs from the naive implementation the bound is measured against, so the suite
passing it at 16 and 32 bits shows the policy admits a real tiled kernel.
"""

import numpy as np

import attnspec
from attnspec.reference.arithmetic import Arithmetic
from attnspec.reference.sdpa import prepare, scores, visible, weighted_values

FLOAT32 = Arithmetic(compute=np.float32)
TILE = 64


class FlashLike(attnspec.Backend):
    name = "flash-like"
    clauses = ("sdpa*",)
    dtypes = ("bfloat16", "float16", "float32")

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        p = prepare(q, k, v, **options)
        rows = range(p.n_q)
        m = np.full((p.batch, p.h_q, p.n_q, 1), -np.inf, np.float32)
        total = np.zeros_like(m)
        acc = np.zeros((p.batch, p.h_q, p.n_q, p.v.shape[-1]), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            for c0 in range(0, p.n_k, TILE):
                cols = range(c0, min(c0 + TILE, p.n_k))
                vis = visible(p, rows, cols)
                s = np.where(vis, scores(p, rows, cols, FLOAT32), -np.inf).astype(np.float32)
                new_m = np.maximum(m, s.max(axis=-1, keepdims=True))
                shift = np.where(np.isneginf(new_m), 0, new_m).astype(np.float32)
                rescale = np.exp(m - shift).astype(np.float32)
                e = np.exp(s - shift).astype(np.float32)
                total = total * rescale + e.sum(axis=-1, keepdims=True, dtype=np.float32)
                rounded_p = e.astype(q.dtype).astype(np.float32)
                acc = acc * rescale + weighted_values(rounded_p, vis, p.v[:, :, c0 : cols.stop].astype(np.float32))
                m = new_m
        has_key = total > 0
        out = np.where(has_key, acc / np.where(has_key, total, 1), 0).astype(q.dtype)
        lse = np.where(has_key, m + np.log(np.where(has_key, total, 1)), -np.inf)[..., 0].astype(np.float32)
        return (out, lse) if return_lse else out
