"""The committed conformance reports (``docs/results/*.json``): verdicts and findings.

A file holds one report (``pytest --report``) or a run per backend (``scripts/gpu_conformance.py``).
The latest reports of each backend on each device are merged, test by test, into one verdict set.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DTYPES = ("float64", "float32", "float16", "bfloat16")
THIRD_PARTY = ("torch-sdpa", "flex")  # backends wrapping kernels this project did not write


@dataclass
class Report:
    """Every test outcome of one backend on one device, from the latest date it was run."""

    backend: str
    device: str
    date: str
    files: list[str] = field(default_factory=list)
    tests: dict[str, dict] = field(default_factory=dict)
    _by_clause: dict[str, list[tuple[str, dict]]] = field(default_factory=dict, repr=False)

    def under(self, clause_id: str) -> list[tuple[str, dict]]:
        """The (test ID, outcome) pairs reported under ``clause_id`` (their first clause)."""
        if not self._by_clause:
            for test_id, test in self.tests.items():
                self._by_clause.setdefault(test["clauses"][0], []).append((test_id, test))
        return self._by_clause.get(clause_id, [])

    @property
    def third_party(self) -> bool:
        return self.backend.split(":")[0] in THIRD_PARTY


def _raw_reports(path: Path) -> list[tuple[dict, str]]:
    """(report, device name) pairs of one results file; files without reports give none."""
    data = json.loads(path.read_text())
    if "tests" in data:
        return [(data, data["backend"]["device"])]
    device = data.get("environment", {}).get("device", "")
    return [(run["report"], device) for run in data.get("runs", []) if run.get("report")]


def load(results: Path) -> list[Report]:
    """The latest report per (backend, device), the same day's reports merged in file order."""
    latest: dict[tuple[str, str], Report] = {}
    for path in sorted(results.glob("*.json")):
        for raw, device_name in _raw_reports(path):
            device = device_name or raw["backend"]["device"]
            key, date = (raw["backend"]["name"], device), raw["date"][:10]
            if key not in latest or latest[key].date < date:
                latest[key] = Report(*key, date)
            if latest[key].date == date:
                latest[key].files.append(path.name)
                latest[key].tests.update(raw["tests"])
    return sorted(latest.values(), key=lambda r: (r.backend, r.device))


def dtype_of(test_id: str) -> str:
    match = re.search(r"\[([^\]]*)\]$", test_id)
    return match.group(1) if match and match.group(1) in DTYPES else ""


def _cell(outcomes: list[tuple[str, str]]) -> str:
    """One verdict from the outcomes (and skip reasons) of a clause's tests in one dtype."""
    kinds = [o for o, _ in outcomes]
    if "failed" in kinds:
        return "fail"
    if "passed" in kinds:
        return "pass"
    reasons = " ".join(r for _, r in outcomes)
    if not outcomes or "does not declare" in reasons:
        return ""
    return "declined" if "declined" in reasons or "Unsupported" in reasons else "skipped"


def verdicts(report: Report, clause_id: str, quantised: bool = False) -> dict[str, str]:
    """dtype -> pass / fail / declined / skipped for the tests reported under ``clause_id``: their
    16-bit verdicts, or with ``quantised`` those under the quantised tolerance class they ran under."""
    cells: dict[str, list[tuple[str, str]]] = {d: [] for d in DTYPES}
    for test_id, test in report.under(clause_id):
        if dtype_of(test_id):
            outcome = test.get("quantised", {}).get("outcome", "") if quantised else test["outcome"]
            cells[dtype_of(test_id)].append((outcome, test.get("reason", "")))
    return {d: _cell(outcomes) for d, outcomes in cells.items()}


def quantised_class(report: Report) -> str | None:
    """The quantised tolerance class a report's tests also ran under (``--tolerance-class``), if any."""
    return next((t["quantised"]["class"] for t in report.tests.values() if "quantised" in t), None)


@dataclass(frozen=True)
class Finding:
    """A failed test of a backend: what it says, the smallest input and the command."""

    report: Report
    clause: str
    test: str
    dtypes: tuple[str, ...]
    summary: str
    case: str
    reproduce: str


def _line(message: str, prefix: str) -> str:
    found = [ln.strip()[len(prefix) :].strip() for ln in message.splitlines() if ln.strip().startswith(prefix)]
    return re.sub(r"'/\S*?/(conformance/)", r"'\1", found[0]) if found else ""


def _summary(message: str) -> str:
    lines = message.splitlines()
    first = next((ln for ln in lines if "ConformanceError" in ln or "Error" in ln), lines[0] if lines else "")
    return first.split("Error: ", 1)[-1].strip()


def findings(report: Report) -> list[Finding]:
    """One finding per failed test function (its dtypes together), in test order."""
    grouped: dict[str, list[tuple[str, dict]]] = {}
    for test_id, test in report.tests.items():
        if test["outcome"] == "failed":
            grouped.setdefault(test_id.split("[")[0], []).append((test_id, test))
    out = []
    for name, tests in grouped.items():
        message = tests[0][1].get("message", "")
        dtypes = tuple(dtype_of(t) for t, _ in tests)
        case, command = _line(message, "case:"), _line(message, "reproduce:")
        out.append(Finding(report, tests[0][1]["clauses"][0], name, dtypes, _summary(message), case, command))
    return out
