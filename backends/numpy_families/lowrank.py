"""The ``numpy`` backend's operations of :mod:`attnspec.lowrank`."""

from __future__ import annotations

from attnspec.reference import lowrank as ref


class LowRankOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""

    def linformer(self, q, k, v, *, e, f, scale=None):
        return ref.linformer(q, k, v, e=e, f=f, scale=scale).astype(q.dtype)

    def xl_attention(self, q, k, v, *, mem_k, mem_v, scale=None):
        return ref.xl_attention(q, k, v, mem_k=mem_k, mem_v=mem_v, scale=scale).astype(q.dtype)

    def xl_recurrent(self, q, k, v, *, segment_len, mem_len, scale=None):
        return ref.xl_recurrent(q, k, v, segment_len=segment_len, mem_len=mem_len, scale=scale).astype(q.dtype)
