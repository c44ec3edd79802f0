"""From a benchmark document (sessions, records) to its verdicts, Markdown table and plots.

A document is what ``scripts/gpu_bench.py`` writes: ``sessions`` (one per pytest run: the
backend, environment, copy rate), ``records`` (one per timed case and role, see
:mod:`benchmarks.harness`) and ``targets`` (``targets.toml`` as it was read). Everything here is
derived from those, so ``--render`` can redo it on a committed result.
"""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np

TARGETS = Path(__file__).with_name("targets.toml")
SELECT = ("kind", "d", "causal", "lens")  # rule fields matched by equality; n by range
FIELDS = {"ratio": "ratio_vs_sdpa", "frac_copy": "frac_copy"}  # a rule's metric -> the record's field
GROUP = ("kind", "n", "d", "b", "h", "causal", "window", "splits", "lens", "dtype")


RULE_KEYS = {"what", "metric", "n", "min", "max", "min_of", "best_over", *SELECT}


def read_targets(path: Path = TARGETS) -> dict:
    """The targets file, each rule checked: a misspelt key would otherwise select every row."""
    targets = tomllib.loads(path.read_text())
    for backend, rules in targets.items():
        for rule in rules:
            unknown = set(rule) - RULE_KEYS
            metric = rule.get("metric")
            bounds = [k for k in ("min", "max", "min_of") if k in rule]
            if unknown or metric not in (*FIELDS, "memory_exponent") or len(bounds) != 1 or "what" not in rule:
                raise ValueError(
                    f"{path}: [[{backend}]] rule {rule}: needs 'what', a metric of "
                    f"{[*FIELDS, 'memory_exponent']} and one of min/max/min_of; unknown keys {sorted(unknown)}"
                )
    return targets


def base(spec: str) -> str:
    return spec.partition(":")[0]


def spec_of(doc: dict) -> dict[str, str]:
    return {s["session"]: s["spec"] for s in doc["sessions"]}


def _selected(rule: dict, row: dict) -> bool:
    low, high = rule.get("n", (0, float("inf")))
    return low <= row["n"] <= high and all(row.get(f) == rule[f] for f in SELECT if f in rule)


def exponent(points) -> float | None:
    """Least-squares slope of log y against log x; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    return float(np.polyfit(*np.log(np.array(points, dtype=float)).T, 1)[0])


def judge(doc: dict) -> list[dict]:
    """One verdict per (backend, rule, judged row): value, bound, met (None: nothing measured)."""
    specs, verdicts = spec_of(doc), []
    for spec in dict.fromkeys(specs.values()):
        rows = [r for r in doc["records"] if specs[r["session"]] == spec and r["role"] == "backend"]
        for rule in doc["targets"].get(base(spec), []):
            selected = [r for r in rows if _selected(rule, r)]
            judge_rule = _judge_exponent if rule["metric"] == "memory_exponent" else _judge_rows
            verdicts += [dict(v, backend=spec, what=rule["what"]) for v in judge_rule(rule, selected, doc)]
    return verdicts


def _judge_exponent(rule, rows, doc) -> list[dict]:
    # B*N is fixed, so a sequence's share of the peak, peak/B, is what grows with N: ~1 linear, ~2 quadratic
    points = [(r["n"], r["peak_bytes"] / r["b"]) for r in rows if r.get("peak_bytes")]
    value = exponent(points)
    return [_verdict(rule, value, rule["max"], None, f"N = {sorted({n for n, _ in points})}")]


def _judge_rows(rule, rows, doc) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[f] for f in GROUP if f not in rule.get("best_over", ())), []).append(r)
    out, field = [], FIELDS[rule["metric"]]
    for members in groups.values():
        timed = [r for r in members if r.get(field) is not None]
        best = max(timed, key=lambda r: r[field]) if timed else members[0]
        bound = _comparator(doc, best, rule["min_of"]) if "min_of" in rule else rule.get("min")
        out.append(_verdict(rule, best.get(field), bound, best, best["case"]))
    return out


def _comparator(doc, row, role) -> float | None:
    found = [
        r.get("ratio_vs_sdpa")
        for r in doc["records"]
        if r["session"] == row["session"] and r["case"] == row["case"] and r["role"] == role
    ]
    return found[0] if found else None


def _verdict(rule, value, bound, row, where) -> dict:
    upper = "max" in rule
    met = None if value is None or bound is None else (value <= bound if upper else value >= bound)
    return {
        "metric": rule["metric"],
        "value": value,
        "bound": bound,
        "op": "<=" if upper else ">=",
        "met": met,
        "where": where,
        "record": None if row is None else (row["session"], row["case"]),
    }


def _num(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if abs(x) < 10 else f"{x:.1f}"


def _mark(v) -> str:
    return f"{v['op']} {_num(v['bound'])}: " + {True: "met", False: "**not met**", None: "n/a"}[v["met"]]


SECTIONS = {
    "forward": "`sdpa-default`: SDPA with PyTorch's kernel choice, `is_causal=True` on causal rows (= bottom-right, "
    "N_q = N_k). TFLOP/s over the visible pairs.",
    "window": "`sdpa-default`: SDPA `is_causal=True` on the same shape (it has no window fast path; TFLOP/s over "
    "every causal pair); the others with the window (keys seen, bottom-right).",
    "floor": "`floor`: not attention, only QK^T per key tile, float32 scores written once and read once (causal "
    "rows by key tiles of 256): a bound for tiled implementations that keep float32 scores in memory.",
    "backward": "Forward + backward of one attention call, dout given: `sdpa-default` is SDPA's forward and "
    "`torch.autograd.grad` through it (PyTorch's kernel choice, `is_causal=True` on causal rows); the backend's "
    "`sdpa_backward` runs its own forward and then the gradients. TFLOP/s: 14 D FLOPs per visible pair.",
    "decode": "One query per head against a full cache; `sdpa-default`: SDPA `enable_gqa=True`, no mask. GB/s: "
    "K and V read once; 'of copy': fraction of the copy rate measured in the same session.",
}


def markdown(doc: dict, verdicts: list[dict], plots: list[str] = ()) -> str:
    specs = spec_of(doc)
    lines = ["# Attention benchmark", ""]
    for s in doc["sessions"]:
        env = s["environment"]
        lines.append(
            f"- `{s['spec']}` ({s['backend']}): {env['date']} | {env['device']} | torch {env.get('torch')} | "
            f"triton {env.get('triton')} | CUDA {env.get('cuda')} | driver {env.get('driver')} | "
            f"{env['timer']} | copy rate {_num(env.get('copy_rate_GBps'))} GB/s"
        )
    marks = {v["record"]: _mark(v) for v in verdicts if v["record"]}
    order = {case: i for i, case in enumerate(dict.fromkeys(r["case"] for r in doc["records"]))}
    for kind, note in SECTIONS.items():
        rows = [r for r in doc["records"] if r["kind"] == kind]
        if not rows:
            continue
        decode = kind == "decode"
        lines += [
            "",
            f"## {kind}",
            "",
            note,
            "",
            f"| case | run | role | ms | {'GB/s | of copy' if decode else 'TFLOP/s'} | vs SDPA | "
            "first call ms | peak MiB | target |",
            "|---" * (10 if decode else 9) + "|",
        ]
        for r in sorted(rows, key=lambda r: order[r["case"]]):
            rate = f"{_num(r.get('GBps'))} | {_num(r.get('frac_copy'))}" if decode else _num(r.get("tflops"))
            peak = None if r.get("peak_bytes") is None else r["peak_bytes"] / 2**20
            note_ = r.get("error") or (f"declined: {r['declined']}" if "declined" in r else "")
            lines.append(
                f"| {r['case']} | {specs[r['session']]} | {r.get('backend', r['role']) if r['role'] == 'backend' else r['role']} | "
                f"{_num(r.get('ms'))} | {rate} | {_num(r.get('ratio_vs_sdpa'))} | "
                f"{_num(r.get('first_call_ms'), 1)} | {_num(peak, 1)} | "
                f"{marks.get((r['session'], r['case']), '') if r['role'] == 'backend' else ''} {note_} |"
            )
    lines += [
        "",
        "## Targets (`benchmarks/targets.toml`, copied into the JSON)",
        "",
        "| backend | target | row | value | bound | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {v['backend']} | {v['what']} | {v['where']} | {_num(v['value'])} | {v['op']} {_num(v['bound'])} | "
        f"{_mark(v).split(': ')[1]} |"
        for v in verdicts
    ]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def plot(doc: dict, stem: Path) -> list[str]:
    """``STEM-ratio-vs-n.png`` (forward: speed ratio against N, per backend) and ``STEM-scaling.png``
    (time and peak memory per sequence against N, D = 128 non-causal, with fitted exponents)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    specs = spec_of(doc)
    forward = [r for r in doc["records"] if r["kind"] == "forward" and r.get("ms")]
    rows = [r for r in forward if r["role"] == "backend"]
    dims = sorted({r["d"] for r in rows} & {64, 128}) or sorted({r["d"] for r in rows})[-1:] or [128]
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4), sharey=True, squeeze=False)
    for ax, d in zip(axes[0], dims, strict=True):
        for (spec, causal), pts in _series(rows, specs, lambda r, d=d: r["d"] == d, lambda r: r["causal"]).items():
            ax.plot(
                *zip(*[(r["n"], r["ratio_vs_sdpa"]) for r in pts], strict=True),
                marker="o",
                label=f"{spec} {'causal' if causal else 'full'}",
            )
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(xscale="log", xlabel="N", title=f"D = {d}: speed vs SDPA default (same run)")
        _legend(ax)
    axes[0][0].set_ylabel("SDPA time / backend time")
    names = [_save(fig, stem, "ratio-vs-n")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    d = 128 if 128 in {r["d"] for r in forward} else max((r["d"] for r in forward), default=128)
    scaling = [r for r in forward if r["d"] == d and not r["causal"]]
    for ax, (label, value) in zip(
        axes,
        (
            ("time per sequence, ms", lambda r: r["ms"] / r["b"]),
            ("peak memory per sequence, bytes", lambda r: (r.get("peak_bytes") or 0) / r["b"]),
        ),
        strict=True,
    ):
        for (spec, role), pts in _series(scaling, specs, lambda r: True, lambda r: r["role"]).items():
            pts = [(r["n"], value(r)) for r in pts if value(r) > 0]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{spec} {role}: exponent {_num(exponent(pts), 2)}")
        ax.set(xscale="log", yscale="log", xlabel="N", title=f"{label} (D = {d}, non-causal)")
        _legend(ax)
    names.append(_save(fig, stem, "scaling"))
    return names


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)


def _series(rows, specs, keep, key) -> dict:
    out: dict[tuple, list] = {}
    for r in sorted(rows, key=lambda r: r["n"]):
        if keep(r):
            out.setdefault((specs[r["session"]], key(r)), []).append(r)
    return out


def _save(fig, stem: Path, name: str) -> str:
    path = stem.with_name(f"{stem.name}-{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name
