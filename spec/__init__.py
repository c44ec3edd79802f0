"""attnspec: a reference specification of attention, with a float64 oracle and a conformance suite.

The normative clauses live in the spec modules (:mod:`attnspec.sdpa` (with its visibility rules),
:mod:`attnspec.multihead`, :mod:`attnspec.flash`, :mod:`attnspec.positional`, and the families
:mod:`attnspec.sparse`, :mod:`attnspec.hierarchical`, :mod:`attnspec.lowrank`,
:mod:`attnspec.linear`, :mod:`attnspec.retention`), the tolerance
policy in :mod:`attnspec.tolerance`, the backend contract in :mod:`attnspec.contract`.
"""

import importlib
import pkgutil

from attnspec.clauses import CATALOG, SPEC_VERSION, Clause, clause
from attnspec.contract import DTYPES, OPERATIONS, Backend, BackendError, Unsupported
from attnspec.registry import load_backend

# Importing the spec modules registers their operations and clauses: every module of this
# package is imported, so a new spec module needs no line here (a module that uses another's
# operation imports that module itself).
for _module in pkgutil.iter_modules(__path__):
    # Modules only: the subpackages beside them (reference, backends, conformance) import the spec.
    if not _module.name.startswith("_") and not _module.ispkg:
        importlib.import_module(f"{__name__}.{_module.name}")

__version__ = "0.1.0"
__all__ = [
    "CATALOG",
    "SPEC_VERSION",
    "Clause",
    "clause",
    "DTYPES",
    "OPERATIONS",
    "Backend",
    "BackendError",
    "Unsupported",
    "load_backend",
]
