"""The ``numpy`` backend's operations of :mod:`attnspec.lowrank`."""


class LowRankOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""
