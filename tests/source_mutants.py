"""Mutants of a backend's kernel source: a copy of its package with one text changed.

The model kernels carry no switch for their mutants: the mutation is applied to a copy of the
source (Python, Triton or CUDA alike), which then runs exactly as the original does.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType


def factory(original: ModuleType, mutations: dict, name: str, backend_class: str, label: str):
    """A backend factory (``path.py:NAME`` for ``--backend``) for mutation ``name`` of ``mutations``
    (name -> (file, old, new, clause)): the package's ``backend_class``, named ``label:name``."""

    def create(device=None):
        backend = getattr(mutated_package(original, name, *mutations[name][:3]), backend_class)(device=device)
        backend.name = f"{label}:{name}"
        return backend

    return create


def mutated_package(original: ModuleType, name: str, file: str, old: str, new: str) -> ModuleType:
    """Import a copy of package ``original`` in which ``file`` (relative to it) has ``old`` replaced by ``new``."""
    short = original.__name__.rpartition(".")[2]
    root = Path(tempfile.mkdtemp(prefix=f"attnspec-{short}-mutant-"))
    package = root / f"attnspec_{short}_mutant_{name}"
    shutil.copytree(Path(original.__file__ or "").parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    text = (package / file).read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"mutation {name!r}: {old!r} occurs {text.count(old)} times in {file}, expected once")
    (package / file).write_text(text.replace(old, new))
    sys.path.insert(0, str(root))
    return importlib.import_module(package.name)
