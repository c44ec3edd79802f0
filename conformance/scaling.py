"""The scaling report: empirical exponents of time and peak memory against the sequence length.

    python -m attnspec.conformance.scaling [--backend=numpy ...] [--lengths=256,512,...] [--json=PATH]

For every variant in :mod:`attnspec.conformance.scaling_cases` that a backend declares, the
operation runs at each length ``N``; the exponent is the least-squares slope of ``log cost``
against ``log N`` over the largest lengths (``--fit``, 3 by default), where constant overheads
matter least. Dense attention should show ~2, sparse, linear and low-rank forms ~1. The expected
exponents are those of the definition evaluated as the reference does; a backend may do better
(the tiled ``torch`` backend's dense attention needs memory linear in N).

Time is the median of ``--repeat`` runs after one warm-up, on the shared timer
(:mod:`attnspec.conformance.timing`: the host clock on the CPU); peak memory is the backend's own
counter (:meth:`attnspec.Backend.peak_memory`), measured in a separate run so that tracing does
not distort the timing. Timings are a report, never a test: the suite gates
only on deterministic proxies (counted work, peak memory).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np

from attnspec import __version__, load_backend
from attnspec.conformance import timing
from attnspec.conformance.scaling_cases import VARIANTS, Variant

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096)


def exponent(lengths, costs) -> float | None:
    """Slope of ``log cost`` against ``log N`` (None when a cost is missing or not positive)."""
    if len(lengths) < 2 or any(c is None or c <= 0 for c in costs):
        return None
    slope, _ = np.polyfit(np.log(lengths), np.log(costs), 1)
    return float(slope)


def measure(backend, variant: Variant, n: int, repeat: int) -> dict:
    """Median seconds and peak bytes of one run of ``variant`` at length ``n`` (the shared timer:
    its first call is the warm-up, the peak is measured in a run of its own)."""
    args, kwargs = variant.build(n, np.random.default_rng(n))
    native_args = [backend.to_native(a) if isinstance(a, np.ndarray) else a for a in args]
    native_kwargs = {k: backend.to_native(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    op = getattr(backend, variant.op)

    def run():
        return op(*native_args, **native_kwargs)

    timed = timing.measure(run, backend.device, peak_memory=backend.peak_memory, rounds=repeat, warmup_rounds=0)
    return {"n": n, "seconds": timed["ms"] / 1e3, "peak_bytes": timed["peak_bytes"]}


def report_variant(backend, variant: Variant, lengths, repeat: int, fit: int) -> dict:
    rows = [measure(backend, variant, n, repeat) for n in lengths]
    tail = rows[-fit:]
    ns = [r["n"] for r in tail]
    return {
        "variant": variant.name,
        "clause": variant.clause,
        "backend": backend.name,
        "rows": rows,
        "time_exponent": exponent(ns, [r["seconds"] for r in tail]),
        "memory_exponent": exponent(ns, [r["peak_bytes"] for r in tail]),
        "expected_time": variant.expected_time,
        "expected_memory": variant.expected_memory,
    }


def run_report(backends, lengths, *, repeat: int = 3, fit: int = 3, only: str | None = None, log=print) -> dict:
    results = []
    for backend in backends:
        for variant in VARIANTS:
            if variant.clause not in backend.declared or (only and only not in variant.name):
                continue
            result = report_variant(backend, variant, lengths, repeat, fit)
            log(_line(result))
            results.append(result)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "attnspec": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "versions": _versions(backends),
        "lengths": list(lengths),
        "fit_points": fit,
        "repeat": repeat,
        "results": results,
    }


def _versions(backends) -> dict:
    """Framework versions the measured backends ran on (torch, when a torch backend was measured)."""
    versions = {}
    if any(type(b).__module__.startswith("attnspec.backends.torch") for b in backends):
        import torch

        versions["torch"] = torch.__version__
    return versions


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:5.2f}"


def _line(r: dict) -> str:
    largest = r["rows"][-1]
    peak = "n/a" if largest["peak_bytes"] is None else f"{largest['peak_bytes'] / 2**20:.1f} MiB"
    return (
        f"{r['backend']:<8} {r['variant']:<34} time {_fmt(r['time_exponent'])} (expect {r['expected_time']:g})"
        f"  memory {_fmt(r['memory_exponent'])} (expect {r['expected_memory']:g})"
        f"  at N={largest['n']}: {largest['seconds'] * 1e3:8.1f} ms, {peak}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attnspec.conformance.scaling", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backend", action="append", default=[], help="backend(s) to measure (default: numpy)")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="comma-separated sequence lengths, ascending"
    )
    parser.add_argument("--fit", type=int, default=3, help="fit the exponent over this many largest lengths")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per point (the median is kept)")
    parser.add_argument("--only", default=None, help="only variants whose name contains this text")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table as markdown here")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
    if len(lengths) < 2 or lengths != sorted(set(lengths)) or lengths[0] < 1:
        parser.error(f"--lengths must be at least two ascending positive integers; got {args.lengths!r}")
    if not 2 <= args.fit <= len(lengths):
        parser.error(f"--fit must be between 2 and the number of lengths ({len(lengths)}); got {args.fit}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1; got {args.repeat}")
    backends = [load_backend(spec, device=args.device) for spec in (args.backend or ["numpy"])]
    print(f"exponents of cost against N, fitted over N = {lengths[-args.fit :]}")
    report = run_report(backends, lengths, repeat=args.repeat, fit=args.fit, only=args.only)
    if not report["results"]:
        print("no variant matched: check --backend and --only", file=sys.stderr)
        return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report))
        print(f"wrote {args.markdown}")
    return 0


def markdown(report: dict) -> str:
    """The report as a markdown table, with the machine, versions and date it was measured on."""
    fitted = report["lengths"][-report["fit_points"] :]
    lines = [
        f"# Scaling report, {report['date']}",
        "",
        f"attnspec {report['attnspec']}, numpy {report['numpy']}, python {report['python']}, "
        f"{report['processor']}; {', '.join(f'{k} {v}' for k, v in report.get('versions', {}).items())}",
        "",
        f"Exponents of time and peak memory against N, least-squares fit over N = {fitted}; "
        f"median of {report['repeat']} runs. Timings are a report; the suite gates on peak memory only.",
        "",
        "| backend | variant | clause | time exp. | reference | memory exp. | reference | ms at largest N | MiB at largest N |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        last = r["rows"][-1]
        mib = "n/a" if last["peak_bytes"] is None else f"{last['peak_bytes'] / 2**20:.1f}"
        lines.append(
            f"| {r['backend']} | {r['variant']} | `{r['clause']}` | {_fmt(r['time_exponent']).strip()} | "
            f"{r['expected_time']:g} | {_fmt(r['memory_exponent']).strip()} | {r['expected_memory']:g} | "
            f"{last['seconds'] * 1e3:.1f} | {mib} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
