"""The ``numpy`` backend's operations of :mod:`attnspec.hierarchical`."""


class HierarchicalOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""
