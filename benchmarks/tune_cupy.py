"""Tuning sweep of the CuPy forward kernel: candidate tiles per shape, timed against SDPA.

Usage (on a CUDA machine): ``python benchmarks/tune_cupy.py OUT.json [--budget SECONDS]``. For each
shape (bf16, ``B * N = 16384`` tokens, ``H * D = 2048``, as the Triton sweep) it times SDPA's
default kernel and the ``cupy`` kernel with each candidate tile of :data:`CANDIDATES`
(``triton.testing.do_bench``: median, L2 flushed between runs), checks the output against SDPA's,
and writes the times and ratios: the evidence behind :func:`attnspec.backends.cupy.kernels.tile`
and :func:`~attnspec.backends.cupy.kernels.warp_tiles`. Rows are written as they finish; a rerun
skips finished rows. Compile time (NVRTC, once per instantiation) is timed apart, on the first call.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
import time
from pathlib import Path

import cupy as cp
import torch
import torch.nn.functional as F
from triton.testing import do_bench

from attnspec.backends.cupy import kernels, launch, problem

#: (BM, BN, m16 tiles per warp); None: the backend's own choice
CANDIDATES = [None, (128, 64, 1), (128, 64, 2), (128, 32, 2), (64, 64, 1)]
SHAPES = [(d, n, c) for d in (64, 128) for n in (2048, 8192) for c in (False, True)] + [(96, 4000, False)]
TOKENS, WIDTH = 16384, 2048


def inputs(d: int, n: int):
    b, h = max(TOKENS // n, 1), WIDTH // d
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)]


def as_cupy(x: torch.Tensor):
    """A bf16 torch tensor as a CuPy array of the same memory (the backend's bf16 dtype)."""
    from attnspec.backends.cupy import _BF16

    return cp.from_dlpack(x.view(torch.int16)).view(cp.uint16).view(_BF16)


def run_row(d: int, n: int, causal: bool) -> dict:
    q, k, v = inputs(d, n)
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    ref = sdpa()
    row: dict = {"d": d, "n": n, "causal": causal, "sdpa_ms": do_bench(sdpa, return_mode="median"), "tiles": []}
    p = problem.prepare(*(as_cupy(x) for x in (q, k, v)), causal="bottom_right" if causal else None)
    for cand in CANDIDATES:
        block, wm = (None, None) if cand is None else (cand[:2], cand[2])
        entry: dict = {"tile": "default" if cand is None else list(cand)}
        try:
            start = time.perf_counter()
            out, _ = launch.attention(p, block=block, wm=wm)
            cp.cuda.Device().synchronize()
            entry["first_call_s"] = round(time.perf_counter() - start, 3)
            got = torch.from_dlpack(out.view(cp.int16)).view(torch.bfloat16)
            entry["max_error_vs_sdpa"] = float((got.float() - ref.float()).abs().max())
            entry["ms"] = do_bench(functools.partial(launch.attention, p, block=block, wm=wm), return_mode="median")
            entry["ratio"] = row["sdpa_ms"] / entry["ms"]
            chosen = kernels.attention("bfloat16", d, d, rows=n, general=False, partial=False, block=block, wm=wm)
            entry["instance"] = chosen.name
        except Exception as exc:  # a tile that does not compile or fit is a row of the sweep, not its end
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row["tiles"].append(entry)
        print(d, n, causal, entry, flush=True)
    return row


def render(doc: dict) -> str:
    lines = [
        f"# CuPy forward tile sweep\n\n{doc['environment']}\n",
        "| D | N | causal | SDPA ms | tile | ms | ratio | max err |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in doc["rows"]:
        for e in row["tiles"]:
            cells = [row["d"], row["n"], row["causal"], f"{row['sdpa_ms']:.3f}", e["tile"]]
            cells += (
                [f"{e['ms']:.3f}", f"{e['ratio']:.3f}", f"{e['max_error_vs_sdpa']:.3g}"]
                if "ms" in e
                else [e.get("error", "?"), "", ""]
            )
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget", type=float, default=500.0, help="seconds; rows not started by then are left")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    doc["environment"] = (
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CuPy {cp.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
    )
    done = {(r["d"], r["n"], r["causal"]) for r in doc["rows"]}
    for shape in SHAPES:
        if shape in done or time.monotonic() > deadline:
            continue
        doc["rows"].append(run_row(*shape))
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(render(doc))
    print(render(doc))
    sys.exit(0)


if __name__ == "__main__":
    main()
