"""The suite has teeth: every mutant fails on the clause it breaks, and the reference passes.

Each mutant is run against the tests of its clause in a subprocess of its own, one test per
mutant (so a run reports each as it finishes, and xdist spreads them over its workers); the JSON
report must mark that clause failed by a conformance assertion, not by a crash. That every
clause has a mutant is checked with the rest of the catalog in ``tests/test_catalog.py``.
"""

from __future__ import annotations

import pytest

from attnspec.backends.mutants import MUTANTS
from tests.conftest import run_suite


def test_there_are_enough_mutants():
    assert len(MUTANTS) >= 12


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_fails_on_its_clause(tmp_path, name):
    clause = MUTANTS[name].breaks
    code, report, output = run_suite(tmp_path, f"--backend=mutant:{name}", f"--clauses={clause}", profile="mutants")
    assert code == 1, f"mutant {name}: pytest exited {code}, expected 1 (tests failed)\n{output[-3000:]}"
    row = report["clauses"][clause]
    assert row["status"] == "failed", f"mutant {name} was not caught on {clause}: {row}"
    for failure in row["failures"]:
        assert f"[{clause}]" in failure["message"] and "ConformanceError" in failure["message"], (
            f"mutant {name} failed {failure['test']} by something other than a conformance check:\n{failure['message']}"
        )
    convention = MUTANTS[name].convention
    if convention:  # a named alternative: the failure says which one the output matches
        assert any(f"matches {convention}" in f["message"] for f in row["failures"]), (
            f"mutant {name} follows {convention!r}, but no failure names it:\n"
            + "\n---\n".join(f["message"] for f in row["failures"])
        )
    needs = set(MUTANTS[name].needs)
    if needs:  # wrong only where two options meet: isolation names exactly their clauses
        lines = [ln for f in row["failures"] for ln in f["message"].splitlines() if "isolation:" in ln]
        assert any(_isolated_clauses(ln) == needs for ln in lines), (
            f"mutant {name} needs {sorted(needs)}, isolation said:\n" + "\n".join(lines)
        )


def _isolated_clauses(line: str) -> set[str]:
    """The clauses an isolation line names ("... (clauses sdpa.softcap, sdpa.bias)")."""
    return set(line.rpartition("clauses ")[2].rstrip(")").split(", ")) if "clauses " in line else set()
