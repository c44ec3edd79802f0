"""Mutants: deliberately wrong backends, each breaking one clause the way real kernels have.

``--backend=mutant:NAME`` runs one. The project's own tests (``tests/test_mutants.py``) run the
suite against every mutant and assert that it fails on the clause the mutant breaks: that is
the evidence the suite has teeth. Add a mutant with every new clause.
"""

from __future__ import annotations

import re

from attnspec.backends.mutants import flash, hierarchical, linear, lowrank, positional, retention, sdpa, sparse
from attnspec.contract import BackendError

#: name -> mutant class; each class names the clause it breaks in ``breaks``.
MUTANTS = {re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.removesuffix("Mutant")).lower(): cls
           for module in (sdpa, flash, positional, sparse, hierarchical, lowrank, linear, retention) for cls in module.ALL}


def create(variant: str | None = None, device: str | None = None):
    """The mutant ``variant`` as a backend named ``mutant:<variant>``."""
    if variant not in MUTANTS:
        raise BackendError(f"unknown mutant {variant!r}; use mutant:NAME with NAME one of {', '.join(sorted(MUTANTS))}")
    backend = MUTANTS[variant](device=device)
    backend.name = f"mutant:{variant}"
    return backend
