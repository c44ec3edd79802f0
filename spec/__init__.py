"""attnspec: a reference specification of attention, with a float64 oracle and a conformance suite.

The normative clauses live in the spec modules (:mod:`attnspec.sdpa`, :mod:`attnspec.masks`,
:mod:`attnspec.multihead`, :mod:`attnspec.flash`, :mod:`attnspec.positional`, and the families
:mod:`attnspec.sparse`, :mod:`attnspec.hierarchical`, :mod:`attnspec.lowrank`,
:mod:`attnspec.linear`, :mod:`attnspec.retention`), the tolerance
policy in :mod:`attnspec.tolerance`, the backend contract in :mod:`attnspec.contract`.
"""

# Importing the spec modules registers their operations and clauses; sdpa comes first because
# the mask clauses govern its operation.
from attnspec import sdpa, masks, multihead, flash, positional  # noqa: F401,I001
from attnspec import sparse, hierarchical, lowrank, linear, retention  # noqa: F401
from attnspec.clauses import CATALOG, SPEC_VERSION, Clause, clause
from attnspec.contract import DTYPES, OPERATIONS, Backend, BackendError, Unsupported
from attnspec.registry import load_backend

__version__ = "0.1.0"
__all__ = ["CATALOG", "SPEC_VERSION", "Clause", "clause", "DTYPES", "OPERATIONS", "Backend",
           "BackendError", "Unsupported", "load_backend"]
