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


def outcome(clause_ids: tuple[str, ...], rep, declines, quantised: dict | None = None) -> dict:
    """One test's result: its clauses, outcome, and the first lines of any failure; under a quantised
    tolerance class (``quantised``: the test's comparisons) both verdicts (:func:`both_verdicts`)."""
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
    return result if quantised is None else both_verdicts(result, quantised)


def both_verdicts(result: dict, quantised: dict) -> dict:
    """A test run under a quantised class was asserted at the class's bounds: that outcome is its
    verdict under the class. Its ``outcome`` stays the 16-bit verdict, which everything that counts
    passes reads: a test that passed under the class but exceeded a 16-bit bound failed."""
    result["quantised"] = {**quantised, "outcome": result["outcome"]}
    if result["outcome"] == "passed" and quantised["over16"]:
        result["outcome"] = "failed"
        result["message"] = (
            f"{quantised['worst16']['message']}\n"
            f"{quantised['over16']} of {quantised['comparisons']} comparisons over the 16-bit bound; "
            f"the test passes under the {quantised['class']} class only"
        )
    return result


def quantised_row(mine: dict, status: str) -> dict:
    """A clause's verdict under the run's quantised class, and its worst errors against both bounds."""
    records = [r["quantised"] for r in mine.values() if "quantised" in r]
    counts = Counter(q["outcome"] for q in records)
    cls = records[0]["class"] if records else ""
    return {
        "class": cls,
        "status": status
        if status == "unsupported"
        else status_of(counts["passed"], counts["failed"], counts["skipped"]),
        "passed": counts["passed"],
        "failed": counts["failed"],
        "worst16": _worst([q["worst16"] for q in records], "ratio16"),
        "worst": _worst([q["worst"] for q in records], "ratio"),
    }


def _worst(entries: list[dict], key: str) -> dict:
    found = [{k: v for k, v in e.items() if k != "message"} for e in entries if e]
    return max(found, key=lambda e: e[key], default={})


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
        if any("quantised" in r for r in results.values()):
            table[clause_id]["quantised"] = quantised_row(mine, status)
    return table


def print_summary(terminalreporter, target, results: dict) -> None:
    table = per_clause(target, results)
    tr = terminalreporter
    tr.section(
        f"attnspec conformance: backend {target.backend.name} ({target.backend.device}), "
        f"dtypes {', '.join(target.dtypes)}"
    )
    cls = target.tolerance_class.name if target.tolerance_class else None
    extra = f" {'err/16-bit':>10} {cls + ' class':>12} {'err/' + cls:>10}" if cls else ""
    tr.write_line(
        f"{'clause':28} {'status':12} {'passed':>6} {'failed':>6} {'skipped':>7} {'SHOULD not met':>14}{extra}"
    )
    for clause_id, row in table.items():
        if row["status"] == "not run" and not row["tests"]:
            continue  # deselected with --clauses
        line = (
            f"{clause_id:28} {row['status']:12} {row['passed']:6} {row['failed']:6} {row['skipped']:7} "
            f"{row['should_failed']:14}"
        )
        if cls:
            q = row["quantised"]
            line += f" {ratio(q['worst16'], 'ratio16'):>10} {q['status']:>12} {ratio(q['worst'], 'ratio'):>10}"
        tr.write_line(line, red=row["status"] == "failed", green=row["status"] == "passed")
    totals = Counter(row["status"] for row in table.values())
    tr.write_line(", ".join(f"{totals[s]} {s}" for s in STATUS_ORDER if totals[s]))
    if cls:
        tr.write_line(f"status: the 16-bit verdict; the {cls} class's verdict is apart, never a pass at 16 bits")


def ratio(entry: dict, key: str) -> str:
    """The worst error over its bound (``key``: ``ratio16`` or ``ratio``), or ``-`` where nothing was compared."""
    return f"{entry[key]:.3g}" if entry else "-"


def beside_bounds(q: dict) -> str:
    """A clause's worst error beside both bounds (Markdown cells): at 16 bits, then under the class."""
    w16, w = q["worst16"], q["worst"]
    at16 = f"{w16['error']:.3g} / {w16['bound16']:.3g} = {w16['ratio16']:.3g}" if w16 else "-"
    under = f"{w['error']:.3g} / {w['bound']:.3g} = {w['ratio']:.3g}" if w else "-"
    return f"{at16} | {q['status']} | {under}"


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
    ]
    declared = {c: row for c, row in report["clauses"].items() if row["status"] != "unsupported" and row["tests"]}
    cls = next((row["quantised"]["class"] for row in declared.values() if "quantised" in row), None)
    lines += _class_note(cls) + [
        "| clause | status (MUST) | passed | failed | skipped | SHOULD not met |"
        + (f" worst error / 16-bit bound | {cls} class | worst error / {cls} bound |" if cls else ""),
        "|---|---|---|---|---|---|" + ("---|---|---|" if cls else ""),
    ]
    lines += [
        f"| `{c}` | {row['status']} | {row['passed']} | {row['failed']} | {row['skipped']} | "
        f"{row.get('should_failed', 0)} |" + (f" {beside_bounds(row['quantised'])} |" if cls else "")
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


def _class_note(cls: str | None) -> list[str]:
    if not cls:
        return []
    return [
        f"Status is the 16-bit verdict (`attnspec.tolerance.tolerance_policy`). The run was also judged by the "
        f"opt-in `{cls}` tolerance class for quantised kernels (`attnspec.tolerance.quantised_tolerance`), in "
        f"its own columns: a pass under the class is not a pass. Errors are each clause's worst, as error / "
        f"bound = ratio.",
        "",
    ]


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
