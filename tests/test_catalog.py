"""The catalog is complete: every clause has a reference, a conformance test and a mutant, and
every registered variant (a sparse pattern's builder, cases and budget) names a clause.

The mutants themselves are run by ``tests/test_mutants.py``; here only their registration is read.
"""

from __future__ import annotations

import importlib
import pkgutil

import attnspec.conformance
from attnspec import CATALOG
from attnspec import reference as _references  # noqa: F401 (importing it registers every reference)
from attnspec.backends.mutants import MUTANTS
from attnspec.clauses import REFERENCES, attached
from attnspec.conformance import scaling_cases, sparse_cases
from attnspec.reference import sparse as sparse_ref


def clauses_with_tests() -> set[str]:
    """The clause IDs named by a ``clause`` mark on some test in ``attnspec.conformance``."""
    ids: set[str] = set()
    for info in pkgutil.iter_modules(attnspec.conformance.__path__):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"attnspec.conformance.{info.name}")
        for name, test in vars(module).items():
            if name.startswith("test_"):
                ids.update(
                    arg for mark in getattr(test, "pytestmark", ()) if mark.name == "clause" for arg in mark.args
                )
    return ids


def test_every_operation_has_a_reference():
    missing = {CATALOG[c].op for c in CATALOG} - set(REFERENCES)
    assert missing == set(), f"register a reference (@attnspec.clauses.reference) for operation(s) {sorted(missing)}"


def test_every_clause_has_a_test():
    assert set(CATALOG) - clauses_with_tests() == set(), "add a test marked @pytest.mark.clause(ID) for each new clause"


def test_every_clause_has_a_mutant():
    assert set(CATALOG) - set(attached("mutant")) == set(), "add a mutant (a subclass of Mutant) for each new clause"
    assert {cls for classes in attached("mutant").values() for cls in classes} == set(MUTANTS.values())


def test_every_pattern_has_a_builder_cases_and_edges():
    pattern_clauses = {c for c in CATALOG if c.removeprefix("sparse.") in sparse_ref.BUILDERS}
    assert set(attached("cases")) == pattern_clauses
    assert tuple(sparse_ref.BUILDERS) == sparse_cases.PATTERNS
    for pattern, cases in sparse_cases.CASES.items():
        assert cases.edges and all(case.pattern == pattern for case in cases.edges), pattern
        assert 0 <= cases.probe < len(cases.edges) and cases.doc, pattern


def test_every_budgeted_pattern_is_scaled():
    scaled = {v.clause for v in scaling_cases.VARIANTS}
    assert {f"sparse.{p}" for p in sparse_cases.BUDGETED} <= scaled


def test_every_stub_is_named_as_its_clause():
    """The stub of ``MODULE.a.b`` is ``attnspec.MODULE.a_b``; a clause named after its module is
    the module's name; an ID with another prefix (``nsa.select`` in ``hierarchical``) is spelt whole."""
    for c in CATALOG.values():
        module = importlib.import_module(f"attnspec.{c.section}")
        stubs = [name for name, f in vars(module).items() if getattr(f, "clause_id", None) == c.id]
        rest = c.id.removeprefix(f"{c.section}.")
        assert stubs == [c.section if c.id == c.section else rest.replace(".", "_")], c.id
