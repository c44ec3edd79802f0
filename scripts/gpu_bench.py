"""Run the benchmark for each backend and write the result under docs/results/: JSON, table, plots.

Usage (from the repository root; one device call):
    python scripts/gpu_bench.py OUT_DIR [--name NAME] [--backend NAME ...] [--budget SECONDS] [--matrix gpu|smoke]
    python scripts/gpu_bench.py OUT_DIR/NAME.json --render

Each backend runs in its own ``pytest benchmarks --backend=NAME`` process (SDPA's default timed in
the same process: every ratio is within one session), with ``--benchmark-json`` and a
``--bench-log`` that receives each row as it ends (both under OUT_DIR/NAME-parts/). Rerunning the
same command resumes: cases every role of which a log already holds are deselected, and the
document is rebuilt from the logs. After each backend, OUT_DIR/NAME.json (sessions, records, the
targets of ``benchmarks/targets.toml`` and their verdicts) and NAME.md are rewritten; the plots
NAME-ratio-vs-n.png and NAME-scaling.png at the end (NAME: ``bench`` unless given).
``--render``: re-derive the verdicts, table and plots of a written bench.json with the current
targets and code. (Results of the old ``benchmarks/bench_forward.py`` have another format; their
committed tables stand as written.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import summary  # noqa: E402
from benchmarks.cases import MATRICES  # noqa: E402

#: the backends timed, in this order; adding one is a line here and its targets in targets.toml
BACKENDS = ("triton", "cupy", "torch", "flex")
GRACE = 30.0  # seconds a timed-out run gets after Ctrl-C to write its benchmark JSON
NODE = "benchmarks/bench_attention.py::test_attention"


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    sessions, records = [], []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            item = json.loads(line)
        except json.JSONDecodeError:  # the last line of a run killed while writing it
            continue
        (sessions if "environment" in item else records).append(item)
    return sessions, records


def complete(records: list[dict], case, spec: str) -> dict[str, dict] | None:
    """The records of the latest session that has every role of ``case``, else None."""
    by_session: dict[str, dict[str, dict]] = {}
    for r in records:
        if r["case"] == case.id:
            by_session.setdefault(r["session"], {})[r["role"]] = r
    full = [rows for rows in by_session.values() if set(case.roles(spec)) <= set(rows)]
    return full[-1] if full else None


def assemble(logs: dict[str, Path], matrix: str, targets: dict) -> dict:
    """One document from the logs: per backend and case the latest complete session's records
    (else the latest partial ones)."""
    doc = {"sessions": [], "records": [], "targets": targets, "matrix": matrix}
    for spec, path in logs.items():
        sessions, records = read_log(path)
        doc["sessions"] += sessions
        for case in MATRICES[matrix]():
            rows = complete(records, case, spec)
            if rows is None:
                partial = [r for r in records if r["case"] == case.id]
                rows = {r["role"]: r for r in partial if r["session"] == partial[-1]["session"]} if partial else {}
            doc["records"] += list(rows.values())
    used = {r["session"] for r in doc["records"]}
    doc["sessions"] = [s for s in doc["sessions"] if s["session"] in used]
    return doc


def log_path(parts: Path, spec: str) -> Path:
    return parts / f"{spec.replace(':', '-').replace('/', '-')}.jsonl"


def run(spec: str, parts: Path, matrix: str, budget: float, rounds: int | None = None) -> dict:
    parts.mkdir(parents=True, exist_ok=True)
    log = log_path(parts, spec)
    _, records = read_log(log)
    done = [
        f"--deselect={NODE}[{case.id}-{role}]"
        for case in MATRICES[matrix]()
        if complete(records, case, spec)
        for role in case.roles(spec)
    ]
    if len(done) == sum(len(case.roles(spec)) for case in MATRICES[matrix]()):
        print(f"{spec}: every row already done", flush=True)
        return {"spec": spec, "exit": "nothing left to run", "seconds": 0.0, "resumed_rows": len(done)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        f"--backend={spec}",
        f"--bench-matrix={matrix}",
        f"--bench-log={log}",
        f"--benchmark-json={log.with_name(f'{log.stem}-{int(time.time())}.json')}",
        "-q",
        "-p",
        "no:cacheprovider",
        "--tb=line",
        *([f"--bench-rounds={rounds}"] if rounds else []),
        *done,
    ]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=pytest_env()
    )
    try:
        output, status = proc.communicate(timeout=max(budget - GRACE, 1))[0], proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # pytest stops in the running row; the log holds the rows before it
        try:
            output = proc.communicate(timeout=GRACE)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        status = "timed out: rerun the same command to resume"
    seconds = round(time.monotonic() - start, 1)
    print(f"{spec}: exit {status} in {seconds} s ({len(done)} rows already done)", flush=True)
    return {"spec": spec, "exit": status, "seconds": seconds, "resumed_rows": len(done), "output_tail": output[-3000:]}


def write(doc: dict, stem: Path, with_plots: bool) -> None:
    doc["verdicts"] = summary.judge(doc)
    plots = summary.plot(doc, stem) if with_plots and doc["records"] else []
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(summary.markdown(doc, doc["verdicts"], plots))


def render(path: Path) -> None:
    doc = json.loads(path.read_text())
    if "records" not in doc:
        raise SystemExit(f"{path}: not written by this script (the old bench_forward.py format); its table stands")
    doc["targets"] = summary.read_targets()
    write(doc, path.with_suffix(""), with_plots=True)
    print(f"rendered {path.with_suffix('.md')}")


def pytest_env() -> dict:
    """This environment without xdist's worker variables: pytest-benchmark reads them (inherited
    when the driver itself runs inside an xdist worker, as the harness's tests do) as xdist being
    active in the child, and then disables every benchmark."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_XDIST")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", type=Path, help="folder for NAME.json, NAME.md and the plots (or, with --render, a NAME.json)"
    )
    parser.add_argument("--name", default="bench", help="stem of the files written (e.g. 2026-12-07-bench-h100)")
    parser.add_argument(
        "--backend", action="append", default=[], help=f"backend(s) to time (default: {', '.join(BACKENDS)})"
    )
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for every backend together")
    parser.add_argument("--matrix", choices=sorted(MATRICES), default="gpu")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per row (default: the timer's)")
    parser.add_argument(
        "--render", action="store_true", help="OUT is a bench.json: re-derive its verdicts, table, plots"
    )
    args = parser.parse_args(argv)
    if args.render:
        return render(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    specs = args.backend or list(BACKENDS)
    deadline, logs = time.monotonic() + args.budget, {}
    stem, runs = args.out / args.name, []
    parts = args.out / f"{args.name}-parts"
    for index, spec in enumerate(specs):
        budget = (deadline - time.monotonic()) / (len(specs) - index)  # a slow backend cannot starve the rest
        runs.append(run(spec, parts, args.matrix, budget, args.rounds))
        logs[spec] = log_path(parts, spec)
        doc = assemble(logs, args.matrix, summary.read_targets())
        doc["runs"] = runs
        write(doc, stem, with_plots=index == len(specs) - 1)
    print(f"wrote {stem}.json, {stem}.md and the plots beside them; the logs in {parts}")


if __name__ == "__main__":
    main()
