"""attnspec: a reference specification of attention, with a float64 oracle and a conformance suite.

The normative clauses live in the spec modules (:mod:`attnspec.sdpa`, :mod:`attnspec.masks`,
:mod:`attnspec.multihead`, :mod:`attnspec.flash`, :mod:`attnspec.positional`), the tolerance
policy in :mod:`attnspec.tolerance`, the backend contract in :mod:`attnspec.contract`.
"""

from attnspec import flash, masks, multihead, positional, sdpa  # noqa: F401  (registers the clauses)
from attnspec.clauses import CATALOG, SPEC_VERSION, Clause, clause
from attnspec.contract import DTYPES, OPERATIONS, Backend, BackendError, Unsupported
from attnspec.registry import load_backend

__version__ = "0.1.0"
__all__ = ["CATALOG", "SPEC_VERSION", "Clause", "clause", "DTYPES", "OPERATIONS", "Backend",
           "BackendError", "Unsupported", "load_backend"]
