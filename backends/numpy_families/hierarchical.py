"""The ``numpy`` backend's operations of :mod:`attnspec.hierarchical`."""

from __future__ import annotations

from attnspec.reference import lsh, nsa, routed


class HierarchicalOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""

    def nsa(self, q, k, v, **kwargs):
        return nsa.nsa(q, k, v, **kwargs).astype(q.dtype)

    def nsa_select(self, q, k, **kwargs):
        return nsa.nsa_select(q, k, **kwargs)

    def routed(self, q, k, v, **kwargs):
        out, lse = routed.routed(q, k, v, **kwargs)
        return out.astype(q.dtype), lse.astype(q.dtype)

    def routed_assign(self, q, k, **kwargs):
        return routed.routed_assign(q, k, **kwargs)

    def lsh(self, qk, v, **kwargs):
        return lsh.lsh(qk, v, **kwargs).astype(qk.dtype)

    def lsh_buckets(self, qk, **kwargs):
        return lsh.lsh_buckets(qk, **kwargs)
