"""The ``numpy`` backend's operations of :mod:`attnspec.sparse`."""


class SparseOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""
