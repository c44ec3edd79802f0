"""``numpy``: the float64 reference as a backend, in float64 and float32.

Every operation runs the reference in float64 and rounds its results to the input dtype, so
this backend passes every clause by construction and serves as the control beside the mutants.
"""

from __future__ import annotations

import numpy as np

from attnspec import reference as ref
from attnspec.backends.numpy_families import HierarchicalOps, LinearOps, LowRankOps, RetentionOps, SparseOps
from attnspec.contract import Backend, numpy_peak_memory
from attnspec.reference import absolute, alibi, relative, rope


class NumpyBackend(SparseOps, HierarchicalOps, LowRankOps, LinearOps, RetentionOps, Backend):
    name = "numpy"
    clauses = ("*",)
    dtypes = ("float64", "float32")
    devices = ("cpu",)

    def peak_memory(self, fn):
        return numpy_peak_memory(fn)

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        out, lse = ref.sdpa(q, k, v, return_lse=True, **options)
        out = out.astype(q.dtype)
        return (out, lse.astype(q.dtype)) if return_lse else out

    def mha(self, x_q, x_kv, **kwargs):
        return ref.mha(x_q, x_kv, **kwargs).astype(x_q.dtype)

    def flash_forward(self, q, k, v, **kwargs):
        return _as(q.dtype, *ref.flash_forward(q, k, v, **kwargs))

    def merge_partials(self, outs, lses):
        return _as(outs.dtype, *ref.merge_partials(outs, lses))

    def split_kv(self, q, k, v, **kwargs):
        return _as(q.dtype, *ref.split_kv(q, k, v, **kwargs))

    def decode(self, q, k_cache, v_cache, **kwargs):
        return _as(q.dtype, *ref.decode(q, k_cache, v_cache, **kwargs))

    def sinusoidal(self, positions, dim, **kwargs):
        return absolute.sinusoidal(positions, dim, **kwargs)

    def learned(self, table, positions):
        return absolute.learned(table, positions).astype(table.dtype)

    def rope(self, x, positions, **kwargs):
        return rope.rope(x, positions, **kwargs).astype(x.dtype)

    def alibi_slopes(self, num_heads):
        return alibi.alibi_slopes(num_heads)

    def alibi_bias(self, slopes, n_q, n_k, **kwargs):
        return alibi.alibi_bias(slopes, n_q, n_k, **kwargs)

    def t5_bucket(self, relative_position, **kwargs):
        return relative.t5_bucket(relative_position, **kwargs)

    def t5_bias(self, table, q_positions, k_positions, **kwargs):
        return relative.t5_bias(table, q_positions, k_positions, **kwargs).astype(table.dtype)

    def shaw(self, q, k, v, **kwargs):
        return relative.shaw(q, k, v, **kwargs).astype(q.dtype)


def _as(dtype, *arrays: np.ndarray):
    return tuple(a.astype(dtype) for a in arrays)
