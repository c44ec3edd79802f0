"""Speed rows from the committed benchmark files, one shape for the pytest-benchmark matrix and the
Triton tile sweep alike, and the plots drawn from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One timed shape of one backend, against SDPA's default kernel timed in the same session."""

    file: str
    device: str
    date: str  # the run's timestamp
    backend: str
    section: str
    n: int
    d: int
    causal: str
    ms: float
    ratio: float
    peak_mib: float | None


def _matrix_rows(path: Path, data: dict) -> list[Row]:
    env = data["environment"]
    return [
        Row(path.name, env["device"], env["date"], label, case["section"], case["n"], case["d"],
            str(case.get("causal") or "none"), result["ms"], result["ratio_vs_sdpa"], result.get("peak_mib"))
        for case in data["cases"]
        for label, result in case.get("results", {}).items()
        if label != "sdpa-default" and isinstance(result, dict) and "ms" in result
    ]  # fmt: skip


def _sweep_rows(path: Path, data: dict) -> list[Row]:
    env = data["environment"]
    rows = []
    for r in data["rows"]:
        chosen = next((c for c in r.get("configs", []) if c.get("chosen")), None)
        if chosen:
            causal = "bottom_right" if r["causal"] else "none"
            rows.append(Row(path.name, env["device"], env["date"], "triton", "forward", r["n"], r["d"], causal,
                            chosen["ms"], chosen["ratio"], None))  # fmt: skip
    return rows


def load(results: Path) -> list[Row]:
    rows: list[Row] = []
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        if "cases" in data and "targets" in data:
            rows += _matrix_rows(path, data)
        elif "rows" in data and "configs" in str(data["rows"][:1]):
            rows += _sweep_rows(path, data)
    return rows


def latest_for(rows: list[Row], backend: str) -> list[Row]:
    """The backend's rows (``name`` or ``name:variant``) from the newest file of each device."""
    mine = [r for r in rows if r.backend == backend or r.backend.startswith(f"{backend}:")]
    newest = {r.device: max((s.date, s.file) for s in mine if s.device == r.device) for r in mine}
    return [r for r in mine if (r.date, r.file) == newest[r.device]]


def plot(rows: list[Row], path: Path, *, title: str) -> None:
    """Speed ratio against SDPA and peak memory, against N, a line per head dim and causality."""
    fig, (ratio_ax, mem_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in sorted({(r.backend, r.d, r.causal) for r in rows}):
        line = sorted((r for r in rows if (r.backend, r.d, r.causal) == key), key=lambda r: r.n)
        label = f"{key[0]} d={key[1]} causal={key[2]}"
        ratio_ax.plot([r.n for r in line], [r.ratio for r in line], marker="o", label=label)
        if all(r.peak_mib is not None for r in line):
            mem_ax.plot([r.n for r in line], [r.peak_mib for r in line], marker="o", label=label)
    ratio_ax.set(xscale="log", xlabel="N (tokens)", ylabel="speed / SDPA default", title=title)
    mem_ax.set(xscale="log", yscale="log", xlabel="N (tokens)", ylabel="peak memory (MiB)", title="memory")
    ratio_ax.axhline(1.0, color="grey", lw=0.8)
    ratio_ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
