"""Run the context-parallel conformance tests (clauses ``cp.*``) on a multi-GPU host with NCCL.

Usage (from the repository root, on a host with 2 or more CUDA GPUs; no torchrun: the backends
start one process per GPU themselves):

    python scripts/gpu_cp.py OUT_DIR [--world 2,4,8] [--profile ci] [--budget SECONDS] [--dtype bfloat16 ...]

First an NCCL smoke check in this process (one ``torch-ring`` and one ``torch-ulysses`` call per
world size, against the float64 reference, with the time of the first and of a second call), then
one pytest process per (backend, world size): ``pytest conformance/test_cp.py
--backend=torch-ring:P --device=cuda --report=...``. World sizes above the GPU count are skipped.
Writes ``OUT_DIR/cp-gpu.json``: the device, versions and date, the smoke results and every
report (per clause status, failure messages with their smallest inputs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("torch-ring", "torch-ulysses")


def environment() -> dict:
    import numpy
    import torch
    import torch.distributed as dist

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None,
        "numpy": numpy.__version__,
        "gpus": torch.cuda.device_count(),
        "nccl_available": dist.is_available() and dist.is_nccl_available(),
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
    return env


def smoke(backend_name: str, world: int, device: str) -> dict:
    """One causal zigzag call with lengths, twice, against the reference (float32)."""
    import numpy as np

    from attnspec import load_backend
    from attnspec.reference import cp as reference_cp

    result: dict = {"backend": f"{backend_name}:{world}", "world_size": world}
    try:
        backend = load_backend(f"{backend_name}:{world}", device=device)
        rng = np.random.default_rng(world)
        c, h_kv = 256, 2 * world
        q = rng.standard_normal((world, 2, 2 * h_kv, c, 64)).astype(np.float32)
        k = rng.standard_normal((world, 2, h_kv, c, 64)).astype(np.float32)
        v = rng.standard_normal((world, 2, h_kv, c, 64)).astype(np.float32)
        options = dict(layout="zigzag", causal="top_left", seq_lens=np.array([world * c, world * c - 77]))
        scheme = "ulysses" if backend_name == "torch-ulysses" else "ring"
        times = []
        for _ in range(2):
            start = time.perf_counter()
            out, lse = backend.context_parallel(q, k, v, scheme=scheme, **options)
            times.append(time.perf_counter() - start)
        ref_out, ref_lse = reference_cp.gathered(q, k, v, **options)
        finite = np.isfinite(ref_lse)
        result.update(
            ok=True,
            seconds_first_and_second_call=times,
            max_out_error=float(np.abs(out - ref_out).max()),
            max_lse_error=float(np.abs(lse[finite] - ref_lse[finite]).max()),
            padded_rows_match=bool((np.isneginf(lse) == ~finite).all()),
        )
        backend.close()
    except Exception:
        result.update(ok=False, error=traceback.format_exc())
    return result


def run_suite(backend: str, device: str, out: Path, profile: str, dtypes: list[str], budget: float) -> dict:
    report = out / f"report-{re.sub(r'[^A-Za-z0-9_.-]', '-', backend)}.json"
    cmd = [sys.executable, "-m", "pytest", "conformance/test_cp.py", f"--backend={backend}", f"--device={device}"]
    cmd += [f"--hypothesis-profile={profile}", f"--report={report}", "-q", "-p", "no:cacheprovider"]
    cmd += [f"--dtype={d}" for d in dtypes]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
        code, tail = proc.returncode, (proc.stdout + proc.stderr)[-6000:]
    except subprocess.TimeoutExpired as exc:
        code, tail = "timeout", str(exc.stdout or "")[-6000:]
    entry = {"backend": backend, "command": " ".join(cmd), "exit": code, "seconds": time.monotonic() - start}
    entry["output_tail"] = tail
    if report.exists():
        entry["report"] = json.loads(report.read_text())
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--world", default="2,4,8", help="world sizes, comma-separated (default 2,4,8)")
    parser.add_argument("--profile", default="ci", help="Hypothesis profile of the suite (default ci)")
    parser.add_argument("--dtype", action="append", default=[], help="dtypes (default: every declared one)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds per pytest run (default 240)")
    parser.add_argument(
        "--device", default="cuda", help="cuda (NCCL; the default) or cpu (gloo: a dry run of this script)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    most = env["gpus"] if args.device == "cuda" else 64
    worlds = [w for w in (int(x) for x in args.world.split(",")) if 2 <= w <= most]
    results: dict = {"device_argument": args.device}
    results.update(environment=env, world_sizes=worlds, smoke=[], suites=[])
    path = args.out / "cp-gpu.json"
    if not worlds:
        results["error"] = f"no world size of {args.world} fits {env['gpus']} GPU(s)"
    for w in worlds:
        for name in BACKENDS:
            results["smoke"].append(smoke(name, w, args.device))
            path.write_text(json.dumps(results, indent=2))  # partial results survive a cut-off
    for w in worlds:
        for name in BACKENDS:
            results["suites"].append(
                run_suite(f"{name}:{w}", args.device, args.out, args.profile, args.dtype, args.budget)
            )
            path.write_text(json.dumps(results, indent=2))
    path.write_text(json.dumps(results, indent=2))
    for s in results["smoke"]:
        print(s["backend"], "smoke", "ok" if s.get("ok") else "FAILED", s.get("seconds_first_and_second_call", ""))
    for s in results["suites"]:
        clauses = s.get("report", {}).get("clauses", {})
        failed = sorted(c for c, row in clauses.items() if row.get("status") == "failed")
        print(s["backend"], "exit", s["exit"], f"{s['seconds']:.0f} s", "failed:", ", ".join(failed) or "none")
    print("wrote", path)
    ok = worlds and all(s.get("ok") for s in results["smoke"]) and all(s["exit"] == 0 for s in results["suites"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
