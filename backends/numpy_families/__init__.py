"""The ``numpy`` backend's operations for the attention families, one mixin per spec module.

Each mixin runs the float64 reference and rounds its results to the input dtype, like
:class:`attnspec.backends.numpy_backend.NumpyBackend`, which inherits them all.
"""

from attnspec.backends.numpy_families.hierarchical import HierarchicalOps
from attnspec.backends.numpy_families.linear import LinearOps
from attnspec.backends.numpy_families.lowrank import LowRankOps
from attnspec.backends.numpy_families.retention import RetentionOps
from attnspec.backends.numpy_families.sparse import SparseOps

__all__ = ["SparseOps", "HierarchicalOps", "LowRankOps", "LinearOps", "RetentionOps"]
