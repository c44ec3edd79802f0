"""Run the conformance suite on the GPU for every PyTorch backend; write one JSON and one table.

Usage (on a CUDA machine, from the repository root):
    python scripts/gpu_conformance.py OUT_DIR [--budget SECONDS]
Each backend runs in its own pytest process with ``--report``; a backend that runs out of the
time budget is recorded as such. The JSON holds every report (clause statuses, failure messages
with their smallest inputs) plus the device, package versions and date; the markdown table is
rendered from it by :mod:`scripts.results_table`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import conformance_table  # noqa: E402

RUNS = [  # (backend, extra pytest arguments)
    ("torch", ["--hypothesis-profile=ci"]),
    ("torch-sdpa", ["--hypothesis-profile=ci"]),
    ("torch-sdpa:flash", ["--hypothesis-profile=dev"]),
    ("torch-sdpa:efficient", ["--hypothesis-profile=dev"]),
    ("torch-sdpa:cudnn", ["--hypothesis-profile=dev"]),
    ("torch-sdpa:math", ["--hypothesis-profile=dev"]),
    # FlexAttention compiles per shape: split by clause so that a time-out loses one part only
    ("flex", ["--hypothesis-profile=quick", "--dtype=bfloat16", "--clauses=sdpa,sdpa.scale,sdpa.lse,sdpa.gqa,sdpa.softcap"]),
    ("flex", ["--hypothesis-profile=quick", "--dtype=bfloat16", "--clauses=sdpa.causal.*,sdpa.window,sdpa.fully_masked"]),
    ("flex", ["--hypothesis-profile=quick", "--dtype=bfloat16", "--clauses=sdpa.mask,sdpa.bias,sdpa.alibi,sdpa.padding"]),
]


def environment() -> dict:
    import numpy
    import torch

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "numpy": numpy.__version__}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
    for name in ("triton", "hypothesis", "ml_dtypes"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    return env


def run(backend: str, extra: list[str], out: Path, budget: float) -> dict:
    report = out / f"report-{backend.replace(':', '-')}-{abs(hash(tuple(extra)))}.json"
    start = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "conformance", f"--backend={backend}", "--device=cuda",
           f"--report={report}", "-q", "-p", "no:cacheprovider", "--tb=short", "-p", "no:warnings", *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(budget, 1))
        status, tail = proc.returncode, proc.stdout[-4000:] + proc.stderr[-2000:]
    except subprocess.TimeoutExpired as exc:
        status, tail = "timed out", (exc.stdout or b"")[-4000:].decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout)[-4000:]
    result = {"backend": backend, "args": extra, "exit": status, "seconds": round(time.monotonic() - start, 1),
              "output_tail": tail}
    if report.exists():
        result["report"] = json.loads(report.read_text())
        report.unlink()
    print(f"{backend}: exit {status} in {result['seconds']} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all runs together")
    parser.add_argument("--only", default="", help="comma-separated backends to run (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    only = [b for b in args.only.split(",") if b]
    document = {"environment": environment(), "runs": []}
    runs = [(b, e) for b, e in RUNS if not only or b in only]
    for index, (backend, extra) in enumerate(runs):
        share = (deadline - time.monotonic()) / (len(runs) - index)  # a slow run cannot starve the rest
        document["runs"].append(run(backend, extra, args.out, share))
        (args.out / "gpu-conformance.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "gpu-conformance.md").write_text(conformance_table(document))


if __name__ == "__main__":
    main()
