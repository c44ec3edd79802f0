"""The tolerance policy (with the engine's derivation) and the scaling report, as pages."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import matplotlib.pyplot as plt
from sphinx.pycode import ModuleAnalyzer

import attnspec.tolerance
from attnspec.clauses import SPEC_VERSION

from . import rst

ENGINE = (
    "attnspec.conformance.tolerance",
    "attnspec.conformance.bounds",
    "attnspec.conformance.hand_bounds",
    "attnspec.conformance.quantised",
)


def _constants() -> str:
    docs = ModuleAnalyzer.for_module("attnspec.tolerance").find_attr_docs()
    rows = [
        [f"``{name}``", repr(getattr(attnspec.tolerance, name)), rst.plain(" ".join(doc).strip())]
        for (owner, name), doc in docs.items()
        if not owner  # the module's constants; a class's fields are documented with it
    ]
    return rst.table(["constant", "value", "meaning"], rows, widths="20 10 70")


def _engine() -> str:
    text = ""
    for name in ENGINE:
        module = importlib.import_module(name)
        text += rst.heading(f"``{name}``", "~") + rst.docstring(inspect.getdoc(module) or "") + "\n"
    return text


def tolerance_page() -> str:
    return (
        rst.heading("Tolerance policy", "=")
        + f"Spec version {SPEC_VERSION}. From :mod:`attnspec.tolerance`, the policy every numerical comparison uses.\n\n"
        + rst.docstring(inspect.getdoc(attnspec.tolerance) or "")
        + "\n"
        + rst.heading("The rule", "-")
        + rst.docstring(inspect.getdoc(attnspec.tolerance.tolerance_policy) or "")
        + "\n"
        + rst.heading("Quantised kernels (opt-in)", "-")
        + rst.docstring(inspect.getdoc(attnspec.tolerance.quantised_tolerance) or "")
        + "\n"
        + rst.heading("Constants", "-")
        + _constants()
        + rst.heading("Derivation: how the suite computes the bound", "-")
        + _engine()
    )


def _latest_scaling(results: Path) -> Path | None:
    files = sorted(results.glob("*-scaling-*.json"))
    return files[-1] if files else None


def _plot(results: list[dict], path: Path) -> None:
    labels = [f"{r['variant']} ({r['backend']})" for r in results]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(labels) + 1))
    y = range(len(labels))
    ax.barh([i + 0.2 for i in y], [r["time_exponent"] for r in results], height=0.4, label="time")
    ax.barh([i - 0.2 for i in y], [r["memory_exponent"] for r in results], height=0.4, label="peak memory")
    ax.set_yticks(list(y), labels, fontsize=6)
    ax.set(xlabel="exponent of N (slope of log-log fit)", title="scaling exponents")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def scaling_page(srcdir: Path) -> str:
    head = rst.heading("Scaling", "=") + f"Spec version {SPEC_VERSION}. "
    path = _latest_scaling(srcdir / "results")
    if path is None:
        return head + "No committed scaling report.\n"
    data = json.loads(path.read_text())
    _plot(data["results"], srcdir / "_plots" / "scaling.png")
    rows = [
        [r["variant"], rst.clause_ref(r["clause"]), r["backend"], f"{r['time_exponent']:.2f}", str(r["expected_time"]),
         f"{r['memory_exponent']:.2f}", str(r["expected_memory"])]
        for r in data["results"]
    ]  # fmt: skip
    return (
        head
        + f"``python -m attnspec.conformance.scaling`` on {data['machine']}, {data['date'][:10]}, N = "
        + f"{', '.join(map(str, data['lengths']))} (``docs/results/{path.name}``).\n\n"
        + ".. image:: /_plots/scaling.png\n   :alt: scaling exponents\n\n"
        + rst.table(["variant", "clause", "backend", "time", "expected", "memory", "expected"], rows)
    )
