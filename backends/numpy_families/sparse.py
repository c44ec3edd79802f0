"""The ``numpy`` backend's operations of :mod:`attnspec.sparse`."""

from attnspec.reference import sparse as reference


class SparseOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""

    def sparse_mask(self, pattern, n_q, n_k, **pattern_params):
        return reference.sparse_mask(pattern, n_q, n_k, **pattern_params)

    def sparse(self, q, k, v, *, pattern, return_lse=False, **kwargs):
        out, lse = reference.sparse(q, k, v, pattern=pattern, return_lse=True, **kwargs)
        out = out.astype(q.dtype)
        return (out, lse.astype(q.dtype)) if return_lse else out
