"""Every generated page, by name (a path under ``docs/`` without ``.rst``)."""

from __future__ import annotations

from pathlib import Path

from . import backend_pages, facts, findings, policy_pages, reports, sources, spec_pages


def generate(srcdir: Path) -> dict[str, str]:
    families = facts.families()
    ctx = spec_pages.Context(reports.load(srcdir / "results"))
    pages = {family: spec_pages.family_page(ctx, family, clauses) for family, clauses in families.items()}
    pages["clauses"] = spec_pages.index_page(families)
    pages["spec"] = spec_pages.spec_toc(families)
    pages["findings"] = findings.page(ctx.reports)
    pages["tolerance"] = policy_pages.tolerance_page()
    pages["scaling"] = policy_pages.scaling_page(srcdir)
    pages.update(backend_pages.pages(ctx.reports, srcdir))
    pages.update(sources.pages(ctx.sources))
    return pages
