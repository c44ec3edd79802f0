"""A user's own kernel checked against attnspec: ``pytest conformance --backend=examples/my_backend.py:MyAttention``."""

import numpy as np

import attnspec


class MyAttention(attnspec.Backend):
    name = "my-attention"
    clauses = ("sdpa", "sdpa.scale", "sdpa.causal.top_left")  # what this kernel claims to implement
    dtypes = ("float32", "float64")

    def sdpa(self, q, k, v, *, scale=None, causal=None):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        s = scale * (q @ k.swapaxes(-1, -2))
        if causal == "top_left":
            s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -np.inf)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        return (p / p.sum(axis=-1, keepdims=True)) @ v
