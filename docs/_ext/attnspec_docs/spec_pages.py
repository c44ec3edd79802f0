"""One page per spec module: its operations, then one section per clause at the clause's ID."""

from __future__ import annotations

import importlib
import inspect

from attnspec.clauses import CATALOG, OPERATIONS, SPEC_VERSION, Clause

from . import facts, formulas, reports, rst, sources
from .facts import Check, Source

LEGEND = (
    "Verdicts: *pass* every test of the clause passed in that dtype, *fail* one failed, *declined* the "
    "backend raised ``Unsupported`` for every case, *skipped* no case could run; an empty cell: the dtype "
    "was not run. Each row is the latest committed report of that backend on that device (:doc:`findings` "
    "lists every failure).\n\n"
)


class Context:
    """Everything the pages need, collected once per build."""

    def __init__(self, reports_: list[reports.Report]):
        self.reports = reports_
        self.tests = facts.tests_by_clause()
        self.mutants = facts.mutants_by_clause()
        self.sources: dict[Source, str] = {}

    def cite(self, name: str, source: Source) -> str:
        self.sources[source] = name
        return sources.link(name, source)


def _op_family(op: str) -> str:
    return next(c.section for c in CATALOG.values() if c.op == op)


class _Raw(str):
    """An annotation written as in the source (``inspect`` quotes a string annotation)."""

    def __repr__(self) -> str:
        return str(self)


def _signature(op: str) -> str:
    stub = facts.stub_of(op)
    if not stub:
        return OPERATIONS[op]
    sig = inspect.signature(stub)
    params = [p.replace(annotation=_Raw(p.annotation)) for p in sig.parameters.values()]
    return f"{op}{sig.replace(parameters=params, return_annotation=_Raw(sig.return_annotation))}"


def _operation(op: str) -> str:
    stub = facts.stub_of(op)
    uses = ", ".join(rst.clause_ref(c.id) for c in CATALOG.values() if c.op == op)
    summary = facts.first_line(stub.__doc__) if stub else ""
    return f".. py:function:: {_signature(op)}\n\n" + rst.indent(f"{summary}\n\nClauses: {uses}\n\n")


def _is_operation_text(c: Clause) -> bool:
    stub = facts.stub_of(c.op)
    return bool(stub) and inspect.getdoc(stub) == c.text


def _text(c: Clause) -> str:
    if _is_operation_text(c):
        return f".. py:function:: {_signature(c.op)}\n   :no-index:\n\n" + rst.indent(rst.docstring(c.text)) + "\n"
    return rst.docstring(c.text) + "\n"


def _checks(ctx: Context, title: str, checks: list[Check]) -> str:
    items = "".join(f"   - {ctx.cite(k.name, k.source)}: {rst.plain(k.doc)}\n" for k in checks)
    return f":{title}:\n{items}\n" if checks else f":{title}: none\n\n"


def _matrix(ctx: Context, c: Clause) -> str:
    rows, silent = [], []
    for r in ctx.reports:
        cells = reports.verdicts(r, c.id)
        if any(cells.values()):
            rows.append([f"``{r.backend}``", r.device, r.date, *cells.values()])
        else:
            silent.append(f"``{r.backend}`` ({r.device})")
    text = (
        rst.table(["backend", "device", "date", *reports.DTYPES], rows) if rows else "No committed report ran it.\n\n"
    )
    return text + (f"Not declared or not run by: {', '.join(silent)}.\n\n" if silent else "")


def _clause(ctx: Context, c: Clause) -> str:
    ref_name, ref_source = facts.reference_of(c)
    fields = (
        f":Level: {facts.level(c)}\n:Since: {c.since}\n:Operation: :py:func:`{c.op} <attnspec.{_op_family(c.op)}.{c.op}>`\n"
        f":Reference: {ctx.cite(ref_name, ref_source)}\n"
    )
    return (
        f".. _{c.id}:\n\n"
        + rst.heading(c.id, "~")
        + f"{fields}\n{formulas.math(c.id)}{_text(c)}"
        + _checks(ctx, "Conformance tests", ctx.tests.get(c.id, []))
        + _checks(ctx, "Mutants caught", ctx.mutants.get(c.id, []))
        + ".. rubric:: Verdicts\n\n"
        + _matrix(ctx, c)
    )


def family_page(ctx: Context, family: str, clauses: list[Clause]) -> str:
    module = importlib.import_module(f"attnspec.{family}")
    ops = list(dict.fromkeys(c.op for c in clauses if _op_family(c.op) == family))
    return (
        rst.heading(f"``attnspec.{family}``", "=")
        + f".. py:module:: attnspec.{family}\n\n"
        + f"Spec version {SPEC_VERSION}. {len(clauses)} clauses.\n\n"
        + rst.link_clause_ids(inspect.getdoc(module) or "")
        + "\n"
        + (rst.heading("Operations", "-") + "".join(_operation(op) for op in ops) if ops else "")
        + rst.heading("Clauses", "-")
        + LEGEND
        + "".join(_clause(ctx, c) for c in clauses)
    )


def index_page(families: dict[str, list[Clause]]) -> str:
    rows = [
        [rst.clause_ref(c.id), f":doc:`{c.section}`", facts.level(c), c.since, c.title.replace("|", "\\|")]
        for cs in families.values()
        for c in cs
    ]
    return (
        rst.heading("All clauses", "=")
        + f"Spec version {SPEC_VERSION}: {len(CATALOG)} clauses. Cite one as ``attnspec {SPEC_VERSION}, clause ID``; "
        + "its permanent address is ``<family page>.html#<clause ID>``.\n\n"
        + rst.table(["clause", "family", "level", "since", "title"], rows, widths="20 10 10 6 54")
    )


def spec_toc(families: dict[str, list[Clause]]) -> str:
    rows = [
        [f":doc:`{f}`", str(len(cs)), facts.first_line(importlib.import_module(f"attnspec.{f}").__doc__)]
        for f, cs in families.items()
    ]
    return (
        rst.heading("The specification", "=")
        + f"Spec version {SPEC_VERSION}: one page per spec module, one section per clause at the clause's ID.\n\n"
        + rst.table(["page", "clauses", "what"], rows, widths="20 8 72")
        + ".. toctree::\n   :hidden:\n\n"
        + "".join(f"   {f}\n" for f in families)
        + "   clauses\n\n"
    )
