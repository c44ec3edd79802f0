"""Render committed result JSON files as markdown tables (never typed by hand)."""

from __future__ import annotations

import json
import sys

from attnspec.conformance.report import status_of


def _merge_parts(runs: list[dict]) -> list[dict]:
    """Parts of one backend's run (split by --clauses, or resumed after an interruption) become one
    column: each clause's counts summed over the parts that ran its tests."""
    merged: dict[str, dict] = {}
    for r in runs:
        if r["backend"] not in merged:
            merged[r["backend"]] = json.loads(json.dumps(r))
            continue
        into = merged[r["backend"]]
        into["seconds"] = round(into["seconds"] + r["seconds"], 1)
        into["exit"] = f"{into['exit']}+{r['exit']}"
        for clause, row in r["report"]["clauses"].items():
            if row["tests"]:
                into["report"]["clauses"][clause] = _merge_rows(into["report"]["clauses"].get(clause), row)
    return list(merged.values())


def _merge_rows(first: dict | None, second: dict) -> dict:
    if not first or not first["tests"] or first["status"] == "unsupported":
        return second
    empty = {"should_failed": 0, "should_failures": []}  # reports written before SHOULD rules were apart
    keys = ("passed", "failed", "skipped", "tests", "failures", "skips", *empty)
    row = {key: first.get(key, empty.get(key)) + second.get(key, empty.get(key)) for key in keys}
    row["status"] = status_of(row["passed"], row["failed"], row["skipped"])
    if "quantised" in first and "quantised" in second:
        row["quantised"] = _merge_quantised(first["quantised"], second["quantised"], row["skipped"])
    return row


def _merge_quantised(first: dict, second: dict, skipped: int) -> dict:
    """A clause's verdicts under a quantised class over two parts: counts summed, the worst kept."""
    merged = {**first, "passed": first["passed"] + second["passed"], "failed": first["failed"] + second["failed"]}
    merged["status"] = status_of(merged["passed"], merged["failed"], skipped)
    for key, ratio in (("worst16", "ratio16"), ("worst", "ratio")):
        merged[key] = max(first[key], second[key], key=lambda w: w.get(ratio, -1.0))
    return merged


def _cell(row: dict) -> str:
    """A clause's 16-bit verdict; from a run under a quantised class, with its worst error / bound."""
    status = row.get("status", "-")
    if status not in ("passed", "failed"):
        return status
    worst = row.get("quantised", {}).get("worst16")
    ratio = f", error {worst['ratio16']:.3g}x the bound" if worst else ""
    return f"{status} ({row['passed']}/{row['passed'] + row['failed']}{ratio})"


def _class_cell(row: dict) -> str:
    """A clause's verdict under the run's quantised class: a column apart, never the 16-bit verdict."""
    q = row.get("quantised")
    if not q or q["status"] not in ("passed", "failed"):
        return q["status"] if q else "-"
    worst = f", error {q['worst']['ratio']:.3g}x its bound" if q["worst"] else ""
    return f"{q['status']} ({q['passed']}/{q['passed'] + q['failed']}{worst})"


def _quantised_class(run: dict) -> str | None:
    return next((row["quantised"]["class"] for row in run["report"]["clauses"].values() if "quantised" in row), None)


def _sampling(report: dict) -> str:
    """The Hypothesis profile, and the shape tier when not the default (older reports: unknown)."""
    env = report.get("environment", {})
    menu = {"menu": ", shapes from the menu", "gpu": ", the GPU shape tier (--shapes=gpu)"}.get(env.get("shapes"), "")
    return f", profile {env['hypothesis_profile']}{menu}" if "hypothesis_profile" in env else ""


def _headers(runs: list[dict]) -> list[str]:
    """A column per run (its 16-bit verdicts), and beside it one for a quantised class it ran under."""
    headers = []
    for r in runs:
        cls = _quantised_class(r)
        headers += [r["backend"]] + ([f"{r['backend']}, {cls} class (not a pass)"] if cls else [])
    return headers


def conformance_table(document: dict) -> str:
    env = document["environment"]
    runs = _merge_parts([r for r in document["runs"] if "report" in r])
    clauses = sorted({c for r in runs for c, row in r["report"]["clauses"].items() if row["status"] != "unsupported"})
    lines = [
        f"# Conformance on {env.get('device', 'CPU')}",
        "",
        f"{env['date']}; torch {env['torch']} (CUDA {env['cuda']}), triton {env.get('triton')}, "
        f"numpy {env['numpy']}, hypothesis {env.get('hypothesis')}, Python {env['python']}.",
        "",
        "| clause | " + " | ".join(_headers(runs)) + " |",
        "|---|" + "---|" * len(_headers(runs)),
    ]
    for clause in clauses:
        cells = []
        for r in runs:
            row = r["report"]["clauses"].get(clause, {})
            cells += [_cell(row)] + ([_class_cell(row)] if _quantised_class(r) else [])
        lines.append(f"| `{clause}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Runs: "
        + "; ".join(
            f"{r['backend']} exit {r['exit']} in {r['seconds']} s, dtypes "
            f"{', '.join(r['report']['dtypes'])}{_sampling(r['report'])}"
            for r in runs
        ),
        "",
    ]
    missing = [r for r in document["runs"] if "report" not in r]
    for r in missing:
        lines.append(f"- {r['backend']}: no report (exit {r['exit']}).")
    lines += ["", "## Deviations found", ""]
    for r in runs:
        for clause, row in r["report"]["clauses"].items():
            for failure in row["failures"][:2]:
                message = failure["message"].strip().splitlines()
                detail = " ".join(m.strip() for m in message[:4])
                lines.append(f"- **{r['backend']}**, `{clause}`, `{failure['test'].split('::')[-1]}`: {detail}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        print(conformance_table(json.load(fh)))
