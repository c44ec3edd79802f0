"""Where the ``torch`` backend's time goes on a GPU: per-kernel CUDA time of one forward and one decode.

    python benchmarks/profile_torch.py OUT_DIR

For each case and each way of running the tile steps (eager; compiled with unbacked sizes, the
backend's default on CUDA) it times the call with the benchmark's timer
(:mod:`attnspec.conformance.timing`: median of CUDA-event rounds after an L2 flush, first call
apart) and lists the kernels that take the most device time, from ``torch.profiler``. Writes
OUT_DIR/profile-torch.json and .md. It decides nothing: it shows which pass to fuse or drop next.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from attnspec import load_backend
from attnspec.backends.torch_tiled.steps import Steps
from attnspec.conformance import timing

CASES = [  # (label, kind, B, H_q, H_kv, N, D, block_k for forward or num_splits for decode)
    ("forward D=128 N=4096 B=4 H=16 block_k=2048", "forward", 4, 16, 16, 4096, 128, 2048),
    ("forward D=64 N=2048 B=8 H=32 causal block_k=2048", "causal", 8, 32, 32, 2048, 64, 2048),
    ("decode N=131072 B=8 Hq=32 Hkv=8 D=128 splits=1", "decode", 8, 32, 8, 131072, 128, 1),
    ("decode N=131072 B=8 Hq=32 Hkv=8 D=128 splits=64", "decode", 8, 32, 8, 131072, 128, 64),
]
STEPS = {"eager": dict(compiled=False), "compiled-unbacked": dict(compiled=True, symbolic="unbacked")}


def call_for(case, backend):
    _, kind, b, h_q, h_kv, n, d, tile = case
    if kind in ("forward", "causal"):
        q, k, v = (torch.randn(b, h_q, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        backend.block_k = tile
        return lambda: backend.sdpa(q, k, v, causal="bottom_right" if kind == "causal" else None)
    q = torch.randn(b, h_q, 1, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(b, h_kv, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    lens = torch.full((b,), n, device="cuda")
    return lambda: backend.decode(q, k, v, cache_lens=lens, num_splits=tile)


def kernels(fn, top=12) -> list[dict]:
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "device_time_total", 0) > 0]
    rows.sort(key=lambda e: -getattr(e, "device_time_total", 0))
    return [
        {"name": e.key[:120], "calls": e.count, "device_ms": getattr(e, "device_time_total", 0) / 1e3}
        for e in rows[:top]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"environment": timing.environment("cuda"), "cases": []}
    for case in CASES:
        for steps_name, steps_args in STEPS.items():
            backend = load_backend("torch", device="cuda")
            backend.steps = Steps(**steps_args)
            row = {"case": case[0], "steps": steps_name}
            try:
                fn = call_for(case, backend)
                timed = timing.measure(fn, "cuda")
                row.update(ms=timed["ms"], first_call_ms=timed["first_call_ms"], kernels=kernels(fn))
            except Exception as exc:  # a failing variant is a result too
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(row["case"], steps_name, row.get("ms", row.get("error")), flush=True)
            doc["cases"].append(row)
            torch.cuda.empty_cache()
        (args.out / "profile-torch.json").write_text(json.dumps(doc, indent=1))
    (args.out / "profile-torch.md").write_text(markdown(doc))


def markdown(doc) -> str:
    env = doc["environment"]
    lines = ["# Profile of the torch backend", "", f"{env['date']} | {env['device']} | torch {env['torch']}", ""]
    for row in doc["cases"]:
        lines += [
            f"## {row['case']}: {row['steps']}: {row.get('ms', row.get('error'))} ms",
            "",
            "| kernel | calls | device ms |",
            "|---|---|---|",
        ]
        lines += [f"| `{k['name']}` | {k['calls']} | {k['device_ms']:.3f} |" for k in row.get("kernels", [])]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
