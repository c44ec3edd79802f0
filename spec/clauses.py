"""The clause catalog: every normative definition of attnspec has a permanent ID.

A clause is a stub function in one of the spec modules, decorated with :func:`clause`. Its
docstring is the normative text (MUST, SHOULD and MAY in the sense of RFC 2119); its ID never
changes once published, so a failure report, a paper or a bug tracker can cite it.
Clause IDs are dotted paths: ``sdpa``, ``sdpa.causal.bottom_right``, ``rope.half_split``.
A backend declares the clauses it implements; each clause names the backend operation (``op``)
that the conformance suite calls to check it.

The catalog is the only registry. An operation is declared by a typed stub (:func:`operation`)
or a signature string (:func:`operations`); its float64 reference registers itself with
:func:`reference`; mutants and a sparse pattern's cases :func:`attach` themselves to their
clause. Every list the suite iterates over is derived from these registrations.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

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


#: An array argument or result. At the suite's boundary it is a NumPy array in the target dtype;
#: inside a backend, the backend's own array type (:meth:`attnspec.Backend.to_native`).
Array: TypeAlias = np.ndarray

#: Operation name -> its typed stub, for the operations declared with :func:`operation`.
STUBS: dict[str, Callable] = {}


def operation(stub: Callable) -> Callable:
    """Register the decorated typed stub as the backend operation of its name.

    Its annotated signature is the operation's (a backend implements a method of the same name
    taking these arguments); its docstring documents it (Parameters / Returns / Notes). Calling
    it raises: the spec computes nothing, the reference does.
    """
    operations(**{stub.__name__: f"{stub.__name__}{inspect.signature(stub)}"})
    STUBS[stub.__name__] = stub
    return _unimplemented(stub, None, stub.__name__)


def operations(**signatures: str) -> None:
    """Register backend operations, ``name="name(args) -> result"``, before the clauses that use them."""
    for name, signature in signatures.items():
        if name in OPERATIONS:
            raise ValueError(f"operation {name!r} is registered twice")
        OPERATIONS[name] = signature


#: Operation name -> its float64 reference function, registered by :func:`reference`.
REFERENCES: dict[str, Callable] = {}

#: Clause ID -> kind (``"mutant"``, ``"cases"``) -> what registered against it.
ATTACHED: dict[str, dict[str, list]] = {}


def reference(op: str) -> Callable:
    """Register the decorated function as the float64 reference of operation ``op``."""

    def register(fn: Callable) -> Callable:
        if op not in OPERATIONS:
            raise ValueError(f"{fn.__qualname__} is registered as the reference of {op!r}, which is not an operation")
        if op in REFERENCES:
            raise ValueError(
                f"operation {op!r} has two references: {REFERENCES[op].__qualname__} and {fn.__qualname__}"
            )
        REFERENCES[op] = fn
        return fn

    return register


def attach(clause_id: str, kind: str, item) -> None:
    """Register ``item`` (a mutant, a pattern's cases) as the ``kind`` of ``clause_id``.

    Lists of variants (the mutants, the sparse patterns with their edges and budgets) are derived
    from what is attached here, so a new variant is declared once, beside its code.
    """
    if clause_id not in CATALOG:
        raise ValueError(f"{item!r} is attached to clause {clause_id!r}, which is not in the catalog")
    ATTACHED.setdefault(clause_id, {}).setdefault(kind, []).append(item)


def attached(kind: str) -> dict[str, list]:
    """Clause ID -> the items of ``kind`` attached to it, for the clauses that have any."""
    return {cid: kinds[kind] for cid, kinds in ATTACHED.items() if kind in kinds}


def operation_signature(op: str) -> inspect.Signature:
    """The parameters of operation ``op`` as registered, as an :class:`inspect.Signature`."""
    if op in STUBS:
        return inspect.signature(STUBS[op])
    text = OPERATIONS[op]
    head = text[: text.rindex(")") + 1] if "->" not in text else text[: text.index("->")].rstrip()
    namespace: dict = {}
    exec(f"def {head}: pass", namespace)  # noqa: S102 (the spec's own literal signature strings)
    return inspect.signature(namespace[op])


def clause(clause_id: str, *, op: str, since: str = "0.1.0") -> Callable:
    """Register the decorated stub as the normative text of ``clause_id``."""

    def register(stub: Callable) -> Callable:
        if op not in OPERATIONS:
            raise ValueError(
                f"clause {clause_id!r} names operation {op!r}, which is not registered; "
                "call attnspec.clauses.operations() first"
            )
        if clause_id in CATALOG:
            raise ValueError(f"clause {clause_id!r} is defined twice")
        section = stub.__module__.rsplit(".", 1)[-1]
        CATALOG[clause_id] = Clause(clause_id, op, section, since, inspect.getdoc(stub) or "")
        return _unimplemented(stub, clause_id, op)

    return register


def _unimplemented(stub: Callable, clause_id: str | None, op: str) -> Callable:
    """``stub`` with its name, docstring and signature, raising if called: the spec computes nothing."""
    what = f"the text of clause {clause_id!r}" if clause_id else f"the specification of operation {op!r}"

    @functools.wraps(stub)
    def text_only(*args, **kwargs):
        raise NotImplementedError(
            f"{stub.__module__}.{stub.__name__} is {what}, not an implementation; the float64 "
            f"reference of operation {op!r} is {reference_name(op)}"
        )

    if clause_id:
        text_only.clause_id = clause_id  # type: ignore[attr-defined]
    return text_only


def reference_name(op: str) -> str:
    """The dotted name of the registered reference of ``op``."""
    import attnspec.reference  # noqa: F401 (importing it registers every reference)

    fn = REFERENCES[op]
    return f"{fn.__module__}.{fn.__qualname__}"


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
