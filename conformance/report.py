"""The per-clause summary printed at the end of a run, and the JSON report (``--report=FILE``)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections import Counter

import hypothesis
import numpy as np

from attnspec import CATALOG, SPEC_VERSION, __version__

STATUS_ORDER = ("failed", "passed", "declined", "not run", "unsupported")


def outcome(clause_ids: tuple[str, ...], rep, declines) -> dict:
    """One test's result: its clauses, outcome, and the first lines of any failure."""
    result = {"clauses": list(clause_ids), "outcome": rep.outcome, "when": rep.when}
    if hasattr(rep, "wasxfail"):  # a SHOULD rule not met (probes.should): apart from the clause's verdict
        result["outcome"] = "should_failed"
        result["message"] = str(rep.wasxfail).removeprefix("reason: ")
    elif rep.failed:
        text = str(rep.longrepr)
        lines = [ln for ln in text.splitlines() if ln.startswith(("E ", "E\t"))] or text.splitlines()[-5:]
        result["message"] = "\n".join(ln[2:].rstrip() if ln.startswith("E") else ln for ln in lines[:12])
    elif rep.skipped:
        result["reason"] = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    if declines:
        result["declined"] = list(declines)
    return result


def status_of(passed: int, failed: int, skipped: int) -> str:
    """A declared clause's status from its tests' outcomes: any failure fails it; else any pass
    passes it; tests that all skipped were declined by the backend."""
    return "failed" if failed else "passed" if passed else "declined" if skipped else "not run"


def per_clause(target, results: dict) -> dict:
    """clause ID -> {status, passed, failed, skipped, tests, failures}, in catalog order."""
    table = {}
    for clause_id in sorted(CATALOG):
        mine = {node: r for node, r in results.items() if r["clauses"][0] == clause_id}
        counts = Counter(r["outcome"] for r in mine.values())
        status = (
            "unsupported"
            if clause_id not in target.backend.declared
            else status_of(counts["passed"], counts["failed"], counts["skipped"])
        )
        table[clause_id] = {
            "status": status,
            "passed": counts["passed"],
            "failed": counts["failed"],
            "skipped": counts["skipped"],
            "should_failed": counts["should_failed"],  # SHOULD rules not met: not part of the status
            "tests": sorted(mine),
            "failures": [
                {"test": n, "message": r.get("message", "")}
                for n, r in sorted(mine.items())
                if r["outcome"] == "failed"
            ],
            "skips": sorted({r.get("reason", "") for r in mine.values() if r["outcome"] == "skipped"}),
            "should_failures": [
                {"test": n, "message": r.get("message", "")}
                for n, r in sorted(mine.items())
                if r["outcome"] == "should_failed"
            ],
        }
    return table


def print_summary(terminalreporter, target, results: dict) -> None:
    table = per_clause(target, results)
    tr = terminalreporter
    tr.section(
        f"attnspec conformance: backend {target.backend.name} ({target.backend.device}), "
        f"dtypes {', '.join(target.dtypes)}"
    )
    tr.write_line(f"{'clause':28} {'status':12} {'passed':>6} {'failed':>6} {'skipped':>7} {'SHOULD not met':>14}")
    for clause_id, row in table.items():
        if row["status"] == "not run" and not row["tests"]:
            continue  # deselected with --clauses
        line = (
            f"{clause_id:28} {row['status']:12} {row['passed']:6} {row['failed']:6} {row['skipped']:7} "
            f"{row['should_failed']:14}"
        )
        tr.write_line(line, red=row["status"] == "failed", green=row["status"] == "passed")
    totals = Counter(row["status"] for row in table.values())
    tr.write_line(", ".join(f"{totals[s]} {s}" for s in STATUS_ORDER if totals[s]))


def document(target, results: dict, *, hypothesis_profile: str) -> dict:
    """The report of a run: versions, environment, per-clause results and every test's outcome."""
    return {
        "attnspec": __version__,
        "spec_version": SPEC_VERSION,
        "backend": {"name": target.backend.name, "spec": target.spec, "device": target.backend.device},
        "dtypes": list(target.dtypes),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "numpy": np.__version__,
            "hypothesis": hypothesis.__version__,
            "hypothesis_profile": hypothesis_profile,
            "shapes": target.shapes,
            **_frameworks(),
        },
        "clauses": per_clause(target, results),
        "tests": results,
    }


def write_json(path: str, report: dict) -> None:
    """Write ``report`` to ``path`` whole or not at all (a temporary file renamed over it): a run
    killed while writing leaves the previous report, never half of one."""
    temporary = f"{path}.partial"
    with open(temporary, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(temporary, path)


def markdown(report: dict, *, failures_per_clause: int = 3) -> str:
    """The report as a reviewer reads it (``--report-md``: a pull request, a CI job summary): the
    per-clause table of declared clauses, then each failing clause's first failures with their
    messages (clause, backend, shapes, worst element and the command that replays them)."""
    env, backend = report["environment"], report["backend"]
    versions = ", ".join(f"{k} {env[k]}" for k in ("numpy", "torch", "triton", "cupy", "hypothesis") if k in env)
    lines = [
        f"# attnspec conformance: `{backend['name']}` on {env.get('gpu', backend['device'])}",
        "",
        f"Spec {report['spec_version']}, attnspec {report['attnspec']}; {report['date']}; dtypes "
        f"{', '.join(report['dtypes'])}; Hypothesis profile {env['hypothesis_profile']}, shapes "
        f"{env.get('shapes')}; Python {env['python']}, {versions}.",
        "",
        "| clause | status (MUST) | passed | failed | skipped | SHOULD not met |",
        "|---|---|---|---|---|---|",
    ]
    declared = {c: row for c, row in report["clauses"].items() if row["status"] != "unsupported" and row["tests"]}
    lines += [
        f"| `{c}` | {row['status']} | {row['passed']} | {row['failed']} | {row['skipped']} | "
        f"{row.get('should_failed', 0)} |"
        for c, row in declared.items()
    ]
    totals = Counter(row["status"] for row in declared.values())
    lines += ["", ", ".join(f"{totals[s]} {s}" for s in STATUS_ORDER if totals[s]) + "."]
    for title, key in (("Failures (MUST)", "failures"), ("SHOULD rules not met", "should_failures")):
        failing = {c: row for c, row in declared.items() if row.get(key)}
        if failing:
            lines += ["", f"## {title}", ""]
        for c, row in failing.items():
            for failure in row[key][:failures_per_clause]:
                test = failure["test"].split("::")[-1]
                lines += [f"### `{c}`: `{test}`", "", "```", failure["message"].strip(), "```", ""]
            if len(row[key]) > failures_per_clause:
                lines += [f"(and {len(row[key]) - failures_per_clause} more of `{c}` in the JSON report)", ""]
    return "\n".join(lines).rstrip() + "\n"


def _frameworks() -> dict:
    """Versions of the array frameworks the backend loaded (and the GPU it ran on), if any."""
    found: dict[str, str] = {
        name: getattr(sys.modules[name], "__version__", "?")
        for name in ("torch", "triton", "cupy", "ml_dtypes")
        if name in sys.modules
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
    return found
