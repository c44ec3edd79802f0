"""What the site says about each clause, read from the catalog and the registrations beside it.

Importing the reference, the mutants and the conformance tests registers everything attached to a
clause; nothing here lists a clause, a family or a backend by hand.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import attnspec
import attnspec.backends.mutants
import attnspec.conformance
import attnspec.reference  # noqa: F401 (importing it registers every reference)
from attnspec.clauses import CATALOG, REFERENCES, STUBS, Clause, attached

ROOT = Path(attnspec.__file__).resolve().parent.parent
LEVELS = ("MUST", "SHOULD", "MAY")


@dataclass(frozen=True)
class Source:
    """Where a function is defined: a path relative to the repository and its line span."""

    path: str
    first: int
    last: int


@dataclass(frozen=True)
class Check:
    """A conformance test or a mutant that checks a clause."""

    name: str
    doc: str
    source: Source


def families() -> dict[str, list[Clause]]:
    """Spec module -> its clauses, in catalog order."""
    out: dict[str, list[Clause]] = {}
    for c in CATALOG.values():
        out.setdefault(c.section, []).append(c)
    return out


def level(c: Clause) -> str:
    """The RFC 2119 keywords the clause text uses; a clause with none is a definition."""
    found = [w for w in LEVELS if re.search(rf"\b{w}\b", c.text)]
    return ", ".join(found) if found else "definition"


def source_of(fn: Callable) -> Source:
    fn = inspect.unwrap(fn)
    lines, first = inspect.getsourcelines(fn)
    path = Path(inspect.getsourcefile(fn) or "").resolve().relative_to(ROOT)
    return Source(path.as_posix(), first, first + len(lines) - 1)


def first_line(doc: str | None) -> str:
    return (inspect.cleandoc(doc or "").splitlines() or [""])[0]


def reference_of(c: Clause) -> tuple[str, Source]:
    """The dotted name and the source of the float64 reference of the clause's operation."""
    fn = REFERENCES[c.op]
    return f"{fn.__module__}.{fn.__qualname__}", source_of(fn)


def stub_of(op: str) -> Callable | None:
    return STUBS.get(op)


def _conformance_tests() -> list[Callable]:
    tests = []
    for info in pkgutil.iter_modules(attnspec.conformance.__path__):
        if info.name.startswith("test_"):
            module = importlib.import_module(f"attnspec.conformance.{info.name}")
            tests += [t for name, t in vars(module).items() if name.startswith("test_") and callable(t)]
    return tests


def _marked(test: Callable) -> list[str]:
    return [arg for mark in getattr(test, "pytestmark", ()) if mark.name == "clause" for arg in mark.args]


def tests_by_clause() -> dict[str, list[Check]]:
    """Clause ID -> the conformance tests marked with it (the first mark is where it is reported)."""
    out: dict[str, list[Check]] = {}
    for test in _conformance_tests():
        check = Check(
            f"{test.__module__.rsplit('.', 1)[-1]}.{test.__name__}", first_line(test.__doc__), source_of(test)
        )
        for cid in _marked(test):
            out.setdefault(cid, []).append(check)
    return out


def mutants_by_clause() -> dict[str, list[Check]]:
    """Clause ID -> the deliberately wrong backends the suite must catch on it."""
    names = {cls: name for name, cls in attnspec.backends.mutants.MUTANTS.items()}
    return {
        cid: [Check(f"mutant:{names[cls]}", first_line(cls.__doc__), source_of(cls)) for cls in classes]
        for cid, classes in attached("mutant").items()
    }
