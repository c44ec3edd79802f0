"""A page per built-in backend: what it declares, how to run it, its verdicts and its speed."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from attnspec import Backend
from attnspec.clauses import SPEC_VERSION, expand
from attnspec.registry import BUILTINS

from . import bench, reports, rst

PLOTS = "_plots"


def _load(target: str) -> type[Backend] | None:
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception:  # a backend whose framework is not installed on the building machine
        return None


def _declares(cls: type[Backend]) -> str:
    clauses = sorted(expand(cls.clauses))
    fields = [
        f":Class: ``{cls.__module__}.{cls.__qualname__}``",
        f":Clauses: {', '.join(rst.clause_ref(c) for c in clauses)}",
        f":Dtypes: {', '.join(cls.dtypes)}",
        f":Devices: {', '.join(cls.devices)}",
    ]
    return "\n".join(fields) + "\n\n"


def _run(name: str, devices: tuple[str, ...]) -> str:
    lines = "".join(f"   pytest conformance --backend={name} --device={d} --report=report.json\n" for d in devices)
    return rst.heading("Run it", "-") + f".. code-block:: bash\n\n{lines}\n"


def _summary(cells: dict[str, str]) -> str:
    failed = [d for d, v in cells.items() if v == "fail"]
    kinds = {v for v in cells.values() if v}
    return f"fail ({', '.join(failed)})" if failed else ", ".join(sorted(kinds))


def _verdicts(name: str, reports_: list[reports.Report]) -> str:
    mine = [r for r in reports_ if r.backend.split(":")[0] == name]
    if not mine:
        return rst.heading("Verdicts", "-") + "No committed conformance report.\n\n"
    clause_ids = sorted({t["clauses"][0] for r in mine for t in r.tests.values()})
    columns = [(r, False) for r in mine] + [(r, True) for r in mine if reports.quantised_class(r)]
    header = ["clause", *(_column(r, quantised) for r, quantised in columns)]
    rows = [[rst.clause_ref(c), *(_summary(reports.verdicts(r, c, q)) for r, q in columns)] for c in clause_ids]
    rows = [row for row in rows if any(row[1:])]
    return (
        rst.heading("Verdicts", "-")
        + "From the latest committed reports (:doc:`/findings`)."
        + (CLASS_NOTE if len(columns) > len(mine) else "")
        + "\n\n"
        + rst.table(header, rows)
    )


#: Said under a verdict table with a quantised class's column.
CLASS_NOTE = (
    " A column named after a quantised tolerance class holds the verdicts under that opt-in class"
    " (:doc:`/tolerance`), apart from the 16-bit ones: a pass there is not a pass."
)


def _column(report: reports.Report, quantised: bool) -> str:
    name = f"``{report.backend}`` {report.device} {report.date}"
    return f"{name}, {reports.quantised_class(report)} class" if quantised else name


def _speed(name: str, rows: list[bench.Row], srcdir: Path) -> str:
    mine = [r for r in bench.latest_for(rows, name) if r.section == "forward"]
    if not mine:
        return rst.heading("Speed", "-") + "No committed benchmark.\n\n"
    text = rst.heading("Speed", "-")
    for device in sorted({r.device for r in mine}):
        on = sorted((r for r in mine if r.device == device), key=lambda r: (r.backend, r.d, r.causal, r.n))
        image = f"{PLOTS}/{name}-{device.replace(' ', '_')}.png"
        bench.plot(on, srcdir / image, title=f"{name} on {device}")
        table = [
            [
                f"``{r.backend}``",
                str(r.n),
                str(r.d),
                r.causal,
                f"{r.ms:.3f}",
                f"{r.ratio:.2f}",
                f"{r.peak_mib or 0:.0f}",
            ]
            for r in on
        ]
        text += (
            f"{device}, {on[0].date[:10]} (``docs/results/{on[0].file}``):\n\n.. image:: /{image}\n   :alt: {name} speed\n\n"
            + rst.table(["backend", "N", "d", "causal", "ms", "x SDPA", "peak MiB"], table)
        )
    return text


def backend_page(name: str, target: str, ctx: tuple[list[reports.Report], list[bench.Row]], srcdir: Path) -> str:
    cls = _load(target)
    head = rst.heading(f"``{name}``", "=") + f"Spec version {SPEC_VERSION}.\n\n"
    if cls is None:
        return head + f"``{target}`` cannot be imported on the machine that built this page.\n\n"
    doc = rst.plain(" ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split()))
    return (
        head
        + doc
        + "\n\n"
        + _declares(cls)
        + _run(name, cls.devices)
        + _verdicts(name, ctx[0])
        + _speed(name, ctx[1], srcdir)
    )


def pages(reports_: list[reports.Report], srcdir: Path) -> dict[str, str]:
    rows = bench.load(srcdir / "results")
    names = [n for n in BUILTINS if n != "mutant"]
    out = {f"backends/{n}": backend_page(n, BUILTINS[n], (reports_, rows), srcdir) for n in names}
    toc = "".join(f"   {n}\n" for n in names)
    out["backends/index"] = (
        rst.heading("Backends", "=")
        + "The built-in backends (``attnspec.registry.BUILTINS``); ``mutant:NAME`` backends are listed under each clause.\n\n"
        + f".. toctree::\n   :maxdepth: 1\n\n{toc}\n"
    )
    return out
