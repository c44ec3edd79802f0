"""The ``numpy`` backend's operations of :mod:`attnspec.linear`."""


class LinearOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""
