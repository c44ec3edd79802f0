"""Mutants: deliberately wrong backends, each breaking one clause the way real kernels have.

``--backend=mutant:NAME`` runs one. The project's own tests (``tests/test_mutants.py``) run the
suite against every mutant and assert that it fails on the clause the mutant breaks: that is
the evidence the suite has teeth. Add a mutant with every new clause: a subclass of
:class:`~attnspec.backends.mutants.base.Mutant` in this package registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from attnspec.backends.mutants.base import MUTANTS
from attnspec.contract import BackendError

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"mutant": "create"}


def create(variant: str | None = None, device: str | None = None):
    """The mutant ``variant`` as a backend named ``mutant:<variant>``."""
    if variant not in MUTANTS:
        raise BackendError(f"unknown mutant {variant!r}; use mutant:NAME with NAME one of {', '.join(sorted(MUTANTS))}")
    backend = MUTANTS[variant](device=device)
    backend.name = f"mutant:{variant}"
    return backend
