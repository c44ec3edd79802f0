"""A correct FlashAttention-2-style kernel in NumPy, for the project's tests of the tolerance policy.

Forward: float32 scores, an online softmax over 64-key tiles, probabilities rounded to the input
dtype before ``P @ V`` (as FlashAttention does), float32 accumulation, the output rounded at the
end. Backward (FlashAttention-2's): ``P`` recomputed from the float32 LSE, rounded to the dtype
before ``dV = P^T dout``; ``D`` from the output stored in the dtype; ``dS`` rounded to the dtype
before ``dQ`` and ``dK``. Its arithmetic differs from the naive implementation the bounds are
measured against, so the suite passing it at 16 and 32 bits shows the policy admits a real kernel.
"""

import numpy as np

import attnspec
from attnspec.reference import sdpa_grad
from attnspec.reference.arithmetic import Arithmetic
from attnspec.reference.sdpa import prepare, scores, visible, weighted_values

FLOAT32 = Arithmetic(compute=np.float32)
TILE = 64


class FlashLike(attnspec.Backend):
    name = "flash-like"
    clauses = tuple(c for c in attnspec.CATALOG if c.startswith("sdpa"))
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

    def sdpa_backward(self, q, k, v, dout, **options):
        out, lse = self.sdpa(q, k, v, return_lse=True, **options)
        p, do = sdpa_grad.setup(q, k, v, dout, **options)  # zero past the lengths: never read
        f32, stored = np.float32, (lambda x: x.astype(q.dtype).astype(np.float32))
        group, rows, cols = p.h_q // p.h_kv, range(p.n_q), range(p.n_k)
        kk, vv = (np.repeat(x.astype(f32), group, axis=1) for x in (p.k, p.v))
        with np.errstate(over="ignore", invalid="ignore"):
            seen = visible(p, rows, cols) & np.isfinite(lse)[..., None]
            prob = np.where(seen, np.exp(scores(p, rows, cols, FLOAT32) - lse[..., None]), 0).astype(f32)
        do = do.astype(f32)
        d_row = (do * out.astype(f32)).sum(axis=-1, keepdims=True)
        ds = prob * (do @ np.swapaxes(vv, -1, -2) - d_row)
        dr = ds
        if options.get("softcap") is not None:
            raw = (p.q.astype(f32) @ np.swapaxes(kk, -1, -2)) * f32(p.scale)
            dr = ds * (1 - np.tanh(raw / f32(options["softcap"])) ** 2)
        dr, scale = stored(dr), f32(p.scale)
        grads = [
            scale * dr @ kk,
            scale * np.swapaxes(dr, -1, -2) @ p.q.astype(f32),
            np.swapaxes(stored(prob), -1, -2) @ do,
        ]
        grads[1:] = [g.reshape(p.batch, p.h_kv, group, *g.shape[2:]).sum(axis=2) for g in grads[1:]]
        if options.get("bias") is not None:
            grads.append(sdpa_grad.unbroadcast(ds, np.shape(options["bias"])))
        return tuple(g.astype(q.dtype) for g in grads)
