"""The committed tables are rendered from result JSON: parts of an interrupted run merge into one column."""

from __future__ import annotations

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from results_table import conformance_table  # noqa: E402

ENV = {"date": "d", "torch": "t", "cuda": "c", "numpy": "n", "python": "p"}


def _row(status, passed=0, failed=0, skipped=0, tests=(), failures=()):
    return {
        "status": status,
        "passed": passed,
        "failed": failed,
        "skipped": skipped,
        "tests": list(tests),
        "failures": list(failures),
        "skips": [],
    }


def _run(clauses, seconds, exit_code):
    return {
        "backend": "k",
        "exit": exit_code,
        "seconds": seconds,
        "report": {
            "dtypes": ["float32"],
            "environment": {"hypothesis_profile": "dev", "shapes": "menu"},
            "clauses": clauses,
        },
    }


def test_a_resumed_run_sums_each_clause_over_its_parts():
    first = _run(
        {
            "sdpa": _row("passed", 2, tests=["a", "b"]),
            "sdpa.mask": _row("not run"),
            "shaw": _row("unsupported", skipped=1, tests=["s"]),
        },
        10.0,
        "timed out",
    )
    second = _run(
        {
            "sdpa": _row("failed", 1, 1, tests=["c", "d"], failures=[{"test": "x::d", "message": "E"}]),
            "sdpa.mask": _row("passed", 3, tests=["e"]),
            "shaw": _row("not run"),
        },
        5.0,
        0,
    )
    table = conformance_table({"environment": ENV, "runs": [first, second]})
    assert "| `sdpa` | failed (3/4) |" in table
    assert "| `sdpa.mask` | passed (3/3) |" in table
    assert "`shaw`" not in table  # unsupported everywhere: not a row
    assert "k exit timed out+0 in 15.0 s, dtypes float32, profile dev, shapes from the menu" in table
    assert "- **k**, `sdpa`, `d`: E" in table
