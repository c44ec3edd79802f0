"""The ``numpy`` backend's operations of :mod:`attnspec.retention`."""

from __future__ import annotations

from attnspec.reference import retention as ref


class RetentionOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""

    def retention(self, q, k, v, *, return_state=False, **kwargs):
        out, state = ref.retention(q, k, v, return_state=True, **kwargs)
        out = out.astype(q.dtype)
        return (out, state.astype(q.dtype)) if return_state else out

    def retention_decays(self, num_heads):
        return ref.retention_decays(num_heads)
