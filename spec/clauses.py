"""The clause catalog: every normative definition of attnspec has a permanent ID.

A clause is a stub function in one of the spec modules, decorated with :func:`clause`. Its
docstring is the normative text (MUST, SHOULD and MAY in the sense of RFC 2119); its ID never
changes once published, so a failure report, a paper or a bug tracker can cite it.
Clause IDs are dotted paths: ``sdpa``, ``sdpa.causal.bottom_right``, ``rope.half_split``.
A backend declares the clauses it implements; each clause names the backend operation (``op``)
that the conformance suite calls to check it.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SPEC_VERSION = "0.1.0"


@dataclass(frozen=True)
class Clause:
    """One citable definition: its ID, the backend operation it governs, and its text."""

    id: str
    op: str
    section: str
    since: str
    text: str

    @property
    def title(self) -> str:
        return self.text.strip().splitlines()[0] if self.text.strip() else self.id


CATALOG: dict[str, Clause] = {}

#: Operation name -> call signature. Each spec module registers the backend operations its
#: clauses name (:func:`operations`); a backend implements them as methods of the same name.
OPERATIONS: dict[str, str] = {}


def operations(**signatures: str) -> None:
    """Register backend operations, ``name="name(args) -> result"``, before the clauses that use them."""
    for name, signature in signatures.items():
        if name in OPERATIONS:
            raise ValueError(f"operation {name!r} is registered twice")
        OPERATIONS[name] = signature


def clause(clause_id: str, *, op: str, since: str = "0.1.0") -> Callable:
    """Register the decorated stub as the normative text of ``clause_id``."""

    def register(stub: Callable) -> Callable:
        if op not in OPERATIONS:
            raise ValueError(f"clause {clause_id!r} names operation {op!r}, which is not registered; "
                             "call attnspec.clauses.operations() first")
        if clause_id in CATALOG:
            raise ValueError(f"clause {clause_id!r} is defined twice")
        section = stub.__module__.rsplit(".", 1)[-1]
        CATALOG[clause_id] = Clause(clause_id, op, section, since, inspect.getdoc(stub) or "")
        stub.clause_id = clause_id  # type: ignore[attr-defined]
        return stub

    return register


def expand(patterns: Iterable[str]) -> frozenset[str]:
    """The clause IDs matched by ``patterns`` (exact IDs or shell globs such as ``sdpa.*``).

    Raises ``ValueError`` naming any pattern that matches no clause: a typo in a declaration
    must not silently shrink what a backend is checked against.
    """
    ids: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(CATALOG, pattern)
        if not matched:
            known = ", ".join(sorted(CATALOG))
            raise ValueError(f"clause pattern {pattern!r} matches no clause; known clauses: {known}")
        ids.update(matched)
    return frozenset(ids)
