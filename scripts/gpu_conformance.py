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
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import conformance_table  # noqa: E402

RUNS = [  # (backend, extra pytest arguments, share of the time budget)
    ("torch", ["--hypothesis-profile=ci"], 4),  # on CUDA: torch:compiled, the steps compiled by torch.compile
    ("torch-sdpa", ["--hypothesis-profile=ci"], 2),
    ("torch-sdpa:flash", ["--hypothesis-profile=dev"], 1),
    ("torch-sdpa:efficient", ["--hypothesis-profile=dev"], 1),
    ("torch-sdpa:cudnn", ["--hypothesis-profile=dev"], 1),
    ("torch-sdpa:math", ["--hypothesis-profile=dev"], 1),
    # static FlexAttention compiles once per shape (seconds each): shapes from the suite's menu, and
    # the compiles spread over worker processes. (flex:dynamic, one compile per structure, fails to
    # compile causal masks: docs/results/2026-11-22-conformance-flex-dynamic-h100.md.)
    ("flex", ["--hypothesis-profile=dev", "--shapes=menu", "-p", "xdist", "-n", "12"], 6),
    # Triton compiles once per combination of options and tile widths (seconds each; not per length:
    # attention.GENERIC): the compiles spread over worker processes, which share Triton's on-disk
    # cache. The GPU tier (--shapes=gpu, the default on CUDA) reaches past the kernels' tiles (255..4000 tokens, head dim 256, 16k);
    # the dev profile (12 examples a test) lets every test finish inside one device call.
    ("triton", ["--hypothesis-profile=dev", "-p", "xdist", "-n", "12"], 4),
    # CuPy compiles once per instantiation (about a second each, NVRTC), cached on disk and shared by the workers.
    ("cupy", ["--hypothesis-profile=dev", "-p", "xdist", "-n", "12"], 4),
    # mutants of the CUDA sources (tests/cupy_mutants.py): each must fail the clause it breaks
    ("tests/cupy_mutants.py:diagonal_off_by_one", ["--clauses=sdpa.causal.top_left", "-p", "xdist", "-n", "8"], 1),
    ("tests/cupy_mutants.py:merge_base2", ["--clauses=flash.merge", "-p", "xdist", "-n", "8"], 1),
    # Third-party Triton kernels (issue 18), from the wheels in .whl/ (pip install --no-deps .whl/fla_core-*.whl
    # .whl/einops-*.whl .whl/sageattention-*.whl first): fla's chunk kernels with its own decays and with any
    # decay (simple_gla), its fused-chunk kernels, and SageAttention (quantised: its failures are the finding).
    ("fla", ["--hypothesis-profile=dev", "-p", "xdist", "-n", "8"], 2),
    ("fla:simple_gla", ["--hypothesis-profile=dev", "--clauses=retention.*", "-p", "xdist", "-n", "8"], 1),
    ("fla:fused_chunk", ["--hypothesis-profile=dev", "-p", "xdist", "-n", "8"], 1),
    ("sage", ["--hypothesis-profile=dev", "-p", "xdist", "-n", "8"], 2),
    # xFormers (.whl/xformers-*.whl): its dispatcher's choice, and its own Triton split-K kernel.
    ("xformers", ["--hypothesis-profile=dev", "-p", "xdist", "-n", "8"], 2),
    ("xformers:splitk", ["--hypothesis-profile=dev", "-p", "xdist", "-n", "8"], 1),
]


def environment() -> dict:
    import numpy
    import torch

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": numpy.__version__,
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
    for name in ("triton", "hypothesis", "ml_dtypes"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    return env


INTERRUPT_GRACE = 45.0  # at most this share of a run's budget is kept for writing its report after Ctrl-C


def run(backend: str, extra: list[str], out: Path, budget: float) -> dict:
    report = out / f"report-{re.sub(r'[^A-Za-z0-9_.-]', '-', backend)}-{abs(hash(tuple(extra)))}.json"
    start = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "conformance",
        f"--backend={backend}",
        "--device=cuda",
        f"--report={report}",
        "-q",
        "-p",
        "no:cacheprovider",
        "--tb=short",
        "-p",
        "no:warnings",
        *extra,
    ]
    env = dict(os.environ)
    if "-n" in extra:  # one compile thread per xdist worker, not a pool of them in each
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    grace = min(INTERRUPT_GRACE, budget / 4)
    try:
        stdout, stderr = proc.communicate(timeout=max(budget - grace, 1))
        status = proc.returncode
    except subprocess.TimeoutExpired:
        # Ctrl-C: pytest stops inside the running test (left out of the report) and writes the
        # report of the tests that finished
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        status = "timed out (interrupted; the report holds the tests that ran)"
    tail = (stdout or "")[-4000:] + (stderr or "")[-2000:]
    shown = [a for a in extra if not a.startswith("--deselect=")]
    if len(shown) < len(extra):
        shown.append(f"(and --deselect of the {len(extra) - len(shown)} tests a resumed run has results for)")
    result = {
        "backend": backend,
        "args": shown,
        "exit": status,
        "seconds": round(time.monotonic() - start, 1),
        "output_tail": tail,
    }
    if report.exists():
        result["report"] = json.loads(report.read_text())
        report.unlink()
    print(f"{backend}: exit {status} in {result['seconds']} s", flush=True)
    return result


def read_resume(parser: argparse.ArgumentParser, path: Path) -> dict:
    """The document of an interrupted run, or a usage error saying what is wrong with the file."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        parser.error(f"--resume {path}: cannot be read ({exc.strerror})")
    except ValueError as exc:
        parser.error(f"--resume {path}: not JSON ({exc})")
    runs = document.get("runs") if isinstance(document, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "backend" in r and "exit" in r for r in runs):
        parser.error(f"--resume {path}: not a gpu-conformance.json written by this script (no 'runs' with backends)")
    return document


def gpu_count(parser: argparse.ArgumentParser, value: str) -> int:
    if value == "all":
        import torch

        return max(torch.cuda.device_count(), 1)
    if not value.isdigit() or int(value) < 1:
        parser.error(f"--gpus must be a positive integer or 'all'; got {value!r}")
    return int(value)


def spread(extra: list[str], gpus: int) -> list[str]:
    """``extra`` with at least one xdist worker per GPU, each pinned to one (no change for one GPU)."""
    if gpus == 1:
        return extra
    if "-n" in extra:
        at = extra.index("-n") + 1
        extra = [*extra[:at], str(max(int(extra[at]), gpus)), *extra[at + 1 :]]
    else:
        extra = [*extra, "-p", "xdist", "-n", str(gpus)]
    return [*extra, "-p", "attnspec.conformance.gpus", f"--gpus={gpus}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all runs together")
    parser.add_argument("--only", default="", help="comma-separated backends to run (default: all)")
    parser.add_argument(
        "--extra",
        default="",
        help="pytest arguments added to every run, e.g. '--shapes=all -p xdist -n 8' to compare with "
        "reports made before --shapes=gpu became the default on CUDA",
    )
    parser.add_argument(
        "--gpus",
        default="1",
        help="spread each run over this many GPUs of the host ('all': every one): one pytest-xdist worker "
        "per GPU at least, worker I pinned to GPU I mod N (attnspec.conformance.gpus)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        help="an interrupted run's gpu-conformance.json: run only the tests "
        "it has no result for, and write both parts into one document",
    )
    args = parser.parse_args()
    resumed = read_resume(parser, args.resume) if args.resume else None  # checked before torch is imported
    only = [b for b in args.only.split(",") if b]
    unknown = sorted(set(only) - {b for b, _, _ in RUNS})
    if unknown:
        parser.error(
            f"--only: unknown backend(s) {', '.join(unknown)}; this script runs {', '.join(b for b, _, _ in RUNS)}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    document = {"environment": environment(), "runs": []}
    if resumed:
        document = resumed
        document.setdefault("resumed", []).append(environment())
    finished = {r["backend"] for r in document["runs"] if r["exit"] in (0, 1)}  # ran to the end: nothing to resume
    gpus = gpu_count(parser, args.gpus)
    runs = [
        (b, spread(e + args.extra.split(), gpus), w)
        for b, e, w in RUNS
        if (not only or b in only) and b not in finished
    ]
    for index, (backend, extra, weight) in enumerate(runs):
        left = sum(w for _, _, w in runs[index:])  # a slow run cannot starve the rest
        done = [
            f"--deselect={t}"
            for r in document["runs"]
            if r["backend"] == backend
            for t in r.get("report", {}).get("tests", {})
        ]
        document["runs"].append(run(backend, extra + done, args.out, (deadline - time.monotonic()) * weight / left))
        (args.out / "gpu-conformance.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "gpu-conformance.md").write_text(conformance_table(document))


if __name__ == "__main__":
    main()
