"""Forward and decode timing of attnspec backends against PyTorch SDPA's default kernel, in one run.

    python benchmarks/bench_forward.py OUT_DIR [--budget SECONDS] [--no-flex] [--smoke]
    python benchmarks/bench_forward.py RESULT.json --render

Backends come from ``load_backend``, so the timed code paths are the conformance suite's. Writes
OUT_DIR/bench-forward.json and .md, rewritten after each case so that a timeout keeps what was
measured. Medians of ``triton.testing.do_bench`` (CUDA events and an L2 flush without triton);
first call and peak memory apart; ratio = SDPA-default time / backend time, in the same run.
The floor (``scores_floor``) and FlexAttention (its per-shape compile is slow and may fail)
run in later passes, after every backend of the first. ``--smoke``: two
tiny CPU cases that only check the script end to end, written as bench-forward-smoke.*.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnspec import load_backend
from attnspec.backends.torch_tiled.kernel import grouped_matmul

try:
    import triton
    from triton.testing import do_bench
except Exception:  # no triton: CUDA events (or, in the CPU smoke, the host clock) instead
    triton = do_bench = None

MIB = 2**20
SPLITS = (1, 16, 64)  # num_splits tried for the torch backend's decode


def _fwd(b, h, n, d, causal, section="forward", window=None):
    baseline = "SDPA is_causal=True on the same shape (no window fast path)" if window else (
        "SDPA default, is_causal=True (= bottom-right as N_q = N_k)" if causal else "SDPA default")
    return dict(section=section, b=b, h=h, n=n, d=d, causal=causal, window=window, baseline=baseline)


def matrix() -> list[dict]:
    """bf16; B*N = 16384 tokens and H*D = 2048 unless a row says otherwise."""
    cases = []
    for d in (64, 128):
        for n in (512, 1024, 2048, 4096, 8192, 16384):
            cases += [_fwd(16384 // n, 2048 // d, n, d, c) for c in (None, "bottom_right")]
    for d, h in ((80, 25), (96, 21)):  # 2048 / D is not an integer: H rounded down, stated in the row
        for n in (2048, 8192):
            cases += [_fwd(16384 // n, h, n, d, c) for c in (None, "bottom_right")]
    cases += [_fwd(4, 16, 4000, 128, c) for c in (None, "bottom_right")]  # N not a multiple of 128
    cases += [_fwd(1, 16, 16384, 128, "bottom_right", "window", (left, 0)) for left in (511, 2047)]
    cases += [_fwd(16384 // 4096, 2048 // d, 4096, d, None, "tiles") for d in (64, 128)]
    return cases + [_dec(8, 32, 8, n, 128) for n in (8192, 32768, 131072)]


def _dec(b, h, h_kv, n, d):
    return dict(section="decode", b=b, h=h, h_kv=h_kv, n=n, d=d, baseline="SDPA enable_gqa=True, no mask")


def visible_pairs(n_q, n_k, causal=None, window=None) -> int:
    """(query, key) pairs the rules let through, counted per query row (bottom-right offset n_k - n_q)."""
    i, offset = np.arange(n_q, dtype=np.int64), n_k - n_q
    lo, hi = np.zeros(n_q, np.int64), np.full(n_q, n_k - 1, np.int64)
    if causal is not None:
        hi = np.minimum(hi, i if causal == "top_left" else i + offset)
    if window is not None:
        if window[0] >= 0:
            lo = np.maximum(lo, i + offset - window[0])
        if window[1] >= 0:
            hi = np.minimum(hi, i + offset + window[1])
    return int(np.clip(hi - lo + 1, 0, None).sum())


class Clock:
    """Median milliseconds of repeated calls: do_bench, else CUDA events, else (CPU smoke) the host clock."""

    def __init__(self, device: str, use_triton: bool):
        self.cuda = device.startswith("cuda")
        self.do_bench = do_bench if self.cuda and use_triton else None
        self.name = "triton.testing.do_bench" if self.do_bench else "cuda events" if self.cuda else "host clock"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def wall_ms(self, fn):
        """One call on the host clock, the device synchronised on both sides: ``(ms, result)``."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3, out

    def median_ms(self, fn, est_ms: float) -> float:
        if self.do_bench is not None:
            # do_bench runs about rep / (its estimate) timed calls: ask slow calls for about 10, not 1
            return float(self.do_bench(fn, warmup=25, rep=max(100.0, 10 * est_ms), return_mode="median"))
        if self.cuda:
            return _event_median(fn, est_ms)
        return statistics.median([self.wall_ms(fn)[0] for _ in range(6)][1:])  # the first is a warm-up


def _event_median(fn, est_ms: float) -> float:
    flush = torch.empty(256 * MIB, dtype=torch.uint8, device="cuda")  # writing it evicts the inputs from L2
    for _ in range(5):
        fn()
    runs = max(20, min(1000, int(100 / max(est_ms, 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def measure(fn, clock: Clock) -> dict:
    """First call (compile and autotune included), peak memory of a second call, then the median."""
    try:
        first_ms = clock.wall_ms(fn)[0]
        peak_mib, warm_ms = _peak(fn, clock)
        return {"ms": clock.median_ms(fn, warm_ms), "first_call_ms": first_ms, "peak_mib": peak_mib}
    except Exception as exc:  # an error or OOM is a result of the case; the run goes on
        return {"error": _first_line(exc)}
    finally:
        gc.collect()
        if clock.cuda:
            torch.cuda.empty_cache()


def _peak(fn, clock: Clock):
    """MiB allocated above what was live before the call (inputs excluded, output included), and its time."""
    if not clock.cuda:
        return None, clock.wall_ms(fn)[0]  # not measured on the CPU (smoke only)
    clock.sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    warm_ms, out = clock.wall_ms(fn)
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / MIB, warm_ms


def forward_calls(case, be, device, dtype) -> dict:
    """name -> (call, FLOPs counted over the pairs that call's mask lets through); new random tensors."""
    b, h, n, d = case["b"], case["h"], case["n"], case["d"]
    q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype) for _ in range(3))
    opts = dict(causal=case["causal"], window=tuple(case["window"]) if case["window"] else None)
    flops = 4 * b * h * d * visible_pairs(n, n, **opts)
    masked, calls, sdpa = opts["causal"] is not None or opts["window"] is not None, {}, be.get("torch-sdpa")
    if sdpa is not None:
        # the baseline: is_causal=True (top-left) is SDPA's default causal dispatch and, as N_q = N_k,
        # the same mask as bottom-right; window rows compare against it (SDPA has no window fast path)
        base_causal = "top_left" if masked else None
        calls["sdpa-default"] = (lambda: sdpa.sdpa(q, k, v, causal=base_causal),
                                 4 * b * h * d * visible_pairs(n, n, base_causal))
        if masked:  # the adapter with the row's own arguments: lower-right CausalBias, or a dense window mask
            calls["torch-sdpa"] = (lambda: sdpa.sdpa(q, k, v, **opts), flops)
    for name in ("torch", "flex"):
        if name in be:
            calls[name] = (lambda backend=be[name]: backend.sdpa(q, k, v, **opts), flops)
    if case["section"] == "forward" and FLOOR in be:  # be[FLOOR]: the torch backend's key tile
        calls[FLOOR] = (lambda: scores_floor(q, k, opts["causal"], be[FLOOR]), flops)
    if case["section"] == "tiles":  # the torch backend's key tile, and its steps run eagerly
        for name, backend in tile_variants(device).items():
            calls[name] = (lambda backend=backend: backend.sdpa(q, k, v, **opts), flops)
    return calls


TILES = (512, 1024, 4096)
#: not a backend: a lower bound on this kind of tiled attention with float32 scores in device memory
FLOOR = "floor: QK^T + one read"
FLOOR_CAUSAL_TILE = 256  # causal rows: narrow key tiles, so that about the visible triangle is computed


def scores_floor(q, k, causal, block_k):
    """The least the ``torch`` backend's kind of algorithm does: each key tile's float32 scores, for
    the rows that see the tile (rows >= its first key when causal, with key tiles of
    ``FLOOR_CAUSAL_TILE``), written to device memory once and read once (their row maximum). The
    exp, the row sums, writing P and ``P @ V`` come on top, so a tiled implementation that keeps
    float32 scores in device memory is slower than this: a ratio to SDPA below a target here means
    that no such implementation can meet it. (Scores rounded to 16 bits, or chunks small enough to
    stay in L2, would move less; they are outside what this bounds.)
    """
    b, h_q, n_q, d = q.shape
    h_kv = k.shape[1]
    q = q.reshape(b, h_kv, h_q // h_kv, n_q, d)  # grouped as the backend groups GQA heads
    tile = FLOOR_CAUSAL_TILE if causal else block_k
    top = None
    for c0 in range(0, k.shape[2], tile):
        rows = q[:, :, :, c0 if causal else 0:]
        top = grouped_matmul(rows, k[:, :, c0:c0 + tile].transpose(-1, -2), torch.float32).amax(-1)
    return top


def tile_variants(device) -> dict:
    variants = {}
    for block_k in TILES:
        variants[f"torch block_k={block_k}"] = backend = load_backend("torch", device=device)
        backend.block_k = block_k
    variants["torch:eager"] = load_backend("torch:eager", device=device)
    return variants


def decode_calls(case, be, device, dtype) -> dict:
    """name -> (call, bytes of K and V it must read); one query against a full cache."""
    b, h, h_kv, n, d = case["b"], case["h"], case["h_kv"], case["n"], case["d"]
    q = torch.randn(b, h, 1, d, device=device, dtype=dtype)
    k_cache, v_cache = (torch.randn(b, h_kv, n, d, device=device, dtype=dtype) for _ in range(2))
    kv_bytes = 2 * b * h_kv * n * d * k_cache.element_size()
    calls = {"sdpa-default": (lambda: F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True), kv_bytes)}
    # lengths on the device cost the torch backend a synchronisation per call (it reads them on the
    # host to check them and to decide what to skip); a serving loop that knows them on the host
    # passes them from there
    for where in ("device", "host"):
        lens = torch.full((b,), n, dtype=torch.int64, device=device if where == "device" else "cpu")
        for s in SPLITS:
            calls[f"torch splits={s}" + (" lens on host" if where == "host" else "")] = (
                lambda s=s, lens=lens: be["torch"].decode(q, k_cache, v_cache, cache_lens=lens, num_splits=s), kv_bytes)
    return calls


def run_case(row, be, clock, copy_gbps, device, dtype, seed) -> dict:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # each case starts from an empty allocator cache, whatever ran before
    torch.manual_seed(seed)  # the flex pass redraws the very tensors the first pass used
    decode = row["section"] == "decode"
    calls = (decode_calls if decode else forward_calls)(row, be, device, dtype)
    results = {}
    for name, (fn, work) in calls.items():
        res = measure(fn, clock)
        if "ms" in res and decode:
            res.update(GBps=work / res["ms"] / 1e6, frac_copy=work / res["ms"] / 1e6 / copy_gbps)
        elif "ms" in res:
            res["tflops"] = work / res["ms"] / 1e9
        results[name] = res
    return results


def derive(row) -> None:
    """Ratios to the SDPA default measured in the same run; the best decode split."""
    base = row["results"].get("sdpa-default", {}).get("ms")
    for res in row["results"].values():
        if base and "ms" in res:
            res["ratio_vs_sdpa"] = base / res["ms"]
    if row["section"] == "decode":
        timed = [(r["ms"], name) for name, r in row["results"].items() if name.startswith("torch") and "ms" in r]
        row["torch_best"] = min(timed)[1] if timed else None


def label(row) -> str:
    if row["section"] == "decode":
        return f"N={row['n']} B={row['b']} Hq={row['h']} Hkv={row['h_kv']} D={row['d']}"
    window = f" window={tuple(row['window'])}" if row.get("window") else ""
    return f"D={row['d']} N={row['n']} B={row['b']} H={row['h']} {row['causal'] or 'non-causal'}{window}"


def _exponent(points) -> float | None:
    return float(np.polyfit(*np.log(np.array(points)).T, 1)[0]) if len(points) >= 2 else None


def targets(rows, block_k: int = 0) -> dict:
    done = [r for r in rows if r.get("results")]
    fwd = [(r["results"]["torch"]["ratio_vs_sdpa"], label(r)) for r in done
           if r["section"] == "forward" and r["n"] >= 2048 and "ratio_vs_sdpa" in r["results"].get("torch", {})]
    floor = [(r["results"][FLOOR]["ratio_vs_sdpa"], label(r)) for r in done
             if r["section"] == "forward" and r["n"] >= 2048 and "ratio_vs_sdpa" in r["results"].get(FLOOR, {})]
    dec = [(res["frac_copy"], f"{label(r)} {name}") for r in done if r["section"] == "decode"
           for name, res in r["results"].items() if name.startswith("torch") and "frac_copy" in res]
    # B*N is fixed, so peak/B (one sequence's share) is what grows with N: ~1 linear, ~2 quadratic
    mem = [(r["n"], r["results"]["torch"]["peak_mib"] / r["b"]) for r in done
           if r["section"] == "forward" and r["d"] == 128 and r["causal"] is None
           and r["results"].get("torch", {}).get("peak_mib")]
    # below the key tile a score tile is N wide, so the growth is quadratic there by construction
    beyond_tile = [(n, peak) for n, peak in mem if n >= block_k]
    return {"min_ratio_n_ge_2048": min(fwd) if fwd else None, "ratio_met": bool(fwd) and min(fwd)[0] >= 0.35,
            "floor_ratio_n_ge_2048": (min(floor), max(floor)) if floor else None,
            "best_decode_frac_copy": max(dec) if dec else None, "decode_met": bool(dec) and max(dec)[0] >= 0.8,
            "best_decode_frac_copy_lens_on_device": max((x for x in dec if "on host" not in x[1]), default=None),
            "peak_memory_exponent": _exponent(beyond_tile), "peak_memory_exponent_all_n": _exponent(mem),
            "peak_memory_points": mem, "peak_memory_fit_from_n": block_k}


def _num(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if abs(x) < 10 else f"{x:.1f}"


SECTIONS = {  # title, note under it
    "forward": ("Forward", "`sdpa-default`: is_causal=True for causal rows (= bottom-right, N_q = N_k); "
                "`torch-sdpa`: the adapter's bottom-right CausalBias; `" + FLOOR + "`: not attention, only "
                "its first product per key tile, float32 scores written once and read once (their row maximum; "
                "causal rows by key tiles of 256): a bound for tiled implementations that keep float32 scores in memory."),
    "window": ("Sliding window", "`sdpa-default` is SDPA is_causal=True on the same shape, which has no window "
               "fast path (TFLOP/s over all causal pairs); `torch-sdpa`: the adapter's dense window mask."),
    "tiles": ("Key tile of the torch backend", "`torch` at its default key tile, then other tiles; "
              "`torch:eager`: the same steps without torch.compile."),
    "decode": ("Decode", "`sdpa-default`: SDPA enable_gqa=True, no mask. GB/s: K and V read once; "
               "'of copy': fraction of the copy rate."),
}


def markdown(doc) -> str:
    env = doc["environment"]
    lines = ["# Forward and decode benchmark", "",
             f"{env['date']} | {env['device']} | torch {env['torch']} | triton {env['triton']} | "
             f"CUDA {env['cuda']} | timer {env['timer']} | copy rate {_num(env['copy_rate_GBps'])} GB/s | "
             f"`torch` is {env.get('torch_backend')}", ""]
    for section, (title, note) in SECTIONS.items():
        rows = [r for r in doc["cases"] if r["section"] == section]
        if not rows:
            continue
        decode = section == "decode"
        rate = "GB/s | of copy" if decode else "TFLOP/s"
        lines += [f"## {title}", "", note, "",
                  f"| case | backend | ms | {rate} | vs SDPA | first call ms | peak MiB | note |",
                  "|" + "---|" * (9 if decode else 8)]
        for r in rows:
            if not r.get("results"):
                lines.append(f"| {label(r)} | |" + " |" * (6 if decode else 5) + f" {r['status']} |")
            for name, res in r.get("results", {}).items():
                rates = (f"{_num(res.get('GBps'))} | {_num(res.get('frac_copy'))}" if decode
                         else _num(res.get("tflops")))
                note = res.get("error") or res.get("status") or ("best split" if r.get("torch_best") == name else "")
                lines.append(f"| {label(r)} | {name} | {_num(res.get('ms'))} | {rates} | "
                             f"{_num(res.get('ratio_vs_sdpa'))} | {_num(res.get('first_call_ms'), 1)} | "
                             f"{_num(res.get('peak_mib'), 1)} | {note} |")
        lines.append("")
    return "\n".join(lines + _target_lines(targets(doc["cases"], _block_k(doc))))


def _target_lines(t) -> list[str]:
    def at(found):  # a (value, row) pair
        return f"{found[0]:.3f} at {found[1]}"

    def verdict(found, target, met):
        return f"{at(found)} (target >= {target}: {'met' if met else 'not met'})" if found else "n/a"

    floor, device_lens = t.get("floor_ratio_n_ge_2048"), t.get("best_decode_frac_copy_lens_on_device")

    exp, n0 = t["peak_memory_exponent"], t.get("peak_memory_fit_from_n", 0)
    return ["## Targets (torch backend)", "",
            "- Minimum speed ratio vs SDPA default, forward rows with N >= 2048: "
            + verdict(t["min_ratio_n_ge_2048"], 0.35, t["ratio_met"]),
            "- The same rows, `" + FLOOR + "` (float32 scores written and read once: a bound for tiled implementations that keep them in memory): "
            + (f"{at(floor[0])} to {at(floor[1])}" if floor else "n/a"),
            "- Best decode rate as a fraction of the copy rate: "
            + verdict(t["best_decode_frac_copy"], 0.8, t["decode_met"]),
            "- The same with `cache_lens` on the device (a host synchronisation per call): "
            + (at(device_lens) if device_lens else "n/a"),
            "- Peak memory vs N (D=128, non-causal; B*N is fixed, so peak/B is fitted): exponent "
            + (f"{exp:.2f} over N = {[n for n, _ in t['peak_memory_points'] if n >= n0]} (N >= the key tile "
               f"{n0}; linear ~1, quadratic ~2); {_num(t.get('peak_memory_exponent_all_n'), 2)} over every N"
               if exp is not None else "n/a (fewer than 2 points)"), ""]


def _block_k(doc) -> int:
    return (doc["environment"].get("torch_backend") or {}).get("block_k", 0)


def render(path: Path) -> None:
    """Rewrite ``path`` (a bench-forward JSON) and its markdown from the measured rows, recomputing
    only what is derived from them (ratios, targets): for a change in how results are summarised."""
    doc = json.loads(path.read_text())
    for row in doc["cases"]:
        if row.get("results"):
            derive(row)
    doc["targets"] = targets(doc["cases"], _block_k(doc))
    doc["rendered"] = {"by": "bench_forward.py --render",
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(doc, indent=1, default=str))
    path.with_suffix(".md").write_text(markdown(doc))


def environment(device: str, dtype, clock: Clock, smoke: bool) -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "triton": getattr(triton, "__version__", None), "cuda": torch.version.cuda,
            "python": sys.version.split()[0], "timer": clock.name, "smoke": smoke,
            "copy_rate_GBps": copy_rate_gbps(clock, device, dtype, smoke)}


def copy_rate_gbps(clock: Clock, device, dtype, smoke: bool) -> float:
    """Device-to-device copy of 1 GiB (bf16), counting bytes read plus bytes written; brings the device up."""
    src = torch.randn(2**20 if smoke else 2**29, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / clock.median_ms(lambda: dst.copy_(src), est_ms=1.0) / 1e6


def later_pass(doc, name, backend, clock, device, dtype, deadline, save, error=None) -> None:
    """``name`` (``backend`` as ``forward_calls`` takes it, or ``error`` where it could not load) after
    the first pass, on the same tensors (same seed per case): FlexAttention (its per-shape compile is
    slow and may fail) and the floor, so that neither disturbs what the first pass measures."""
    for seed, row in enumerate(doc["cases"]):
        if row["section"] in ("decode", "tiles") or not row.get("results"):
            continue
        if error:
            row["results"][name] = {"error": error}
        elif time.monotonic() > deadline:
            row["results"][name] = {"status": "skipped: time budget"}
        else:
            row["results"].update(run_case(row, {name: backend}, clock, None, device, dtype, seed))
            derive(row)
            print(f"{name} {label(row)}: {row['results'].get(name)}")
        save()


def flex_pass(doc, clock, device, dtype, deadline, save) -> None:
    try:
        backend, error = load_backend("flex", device=device), None
    except Exception as exc:  # no FlexAttention in this PyTorch, or it cannot load: recorded per row
        backend, error = None, _first_line(exc)
    later_pass(doc, "flex", backend, clock, device, dtype, deadline, save, error=error)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for bench-forward.json and bench-forward.md")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all cases; the rest are skipped")
    parser.add_argument("--no-flex", action="store_true", help="do not time FlexAttention")
    parser.add_argument("--smoke", action="store_true", help="two tiny CPU cases, only to check the script runs")
    parser.add_argument("--render", action="store_true", help="OUT is a bench-forward JSON: re-derive its summary")
    args = parser.parse_args(argv)
    if args.render:
        return render(args.out)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a captured log as they happen
    deadline = time.monotonic() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    clock = Clock(device, use_triton=not args.smoke)
    be = {name: load_backend(name, device=device) for name in ("torch-sdpa", "torch")}
    env = environment(device, dtype, clock, args.smoke)
    env["torch_backend"] = {"name": be["torch"].name, "block_k": be["torch"].block_k}
    torch.ones(64, 64, device=device) @ torch.ones(64, 64, device=device)  # BLAS handle kept out of first calls
    cases = ([_fwd(1, 2, 2048, 16, "bottom_right"), _fwd(1, 2, 256, 16, None, "tiles"), _dec(2, 4, 2, 300, 16)]
             if args.smoke else matrix())
    doc = {"environment": env, "cases": [dict(c, status="pending") for c in cases]}
    stem = args.out / ("bench-forward-smoke" if args.smoke else "bench-forward")

    def save():
        document = {**doc, "targets": targets(doc["cases"], _block_k(doc))}
        stem.with_suffix(".json").write_text(json.dumps(document, indent=1, default=str))
        stem.with_suffix(".md").write_text(markdown(doc))

    for seed, row in enumerate(doc["cases"]):
        if time.monotonic() > deadline:
            row["status"] = "skipped: time budget"
        else:
            row["results"] = run_case(row, be, clock, env["copy_rate_GBps"], device, dtype, seed)
            row["status"] = "done"
            derive(row)
            print(f"{label(row)}: " + ", ".join(f"{k} {_num(r.get('ms'))} ms" for k, r in row["results"].items()))
        save()
    later_pass(doc, FLOOR, be["torch"].block_k, clock, device, dtype, deadline, save)
    if not args.no_flex:
        flex_pass(doc, clock, device, dtype, deadline, save)
    save()
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
