"""The ``numpy`` backend's operations of :mod:`attnspec.retention`."""


class RetentionOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""
