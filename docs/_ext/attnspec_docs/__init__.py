"""Sphinx extension: the attnspec site, generated from the clause catalog at every build.

``builder-inited`` writes the generated pages (every ``*.rst`` under ``docs/``; the hand-written
pages are Markdown) and the plots; :class:`ClauseAnchors` gives each clause's section the clause ID
itself as its HTML ``id``, so ``sdpa.html#sdpa.causal.bottom_right`` is a permanent address.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform

from attnspec.clauses import CATALOG, SPEC_VERSION


class ClauseAnchors(SphinxTransform):
    """After targets are propagated onto sections: the clause ID becomes the section's first id."""

    default_priority = 700

    def apply(self, **kwargs) -> None:
        for section in self.document.findall(nodes.section):
            for name in [n for n in section["names"] if n in CATALOG and n not in section["ids"]]:
                section["ids"].insert(0, name)
                self.document.ids[name] = section
                self.document.nameids[name] = name


def write_pages(srcdir: Path) -> dict[str, str]:
    """Generate every page and write those whose text changed (an unchanged page is not re-read)."""
    from .site import generate  # imported here: it imports the whole project

    pages = generate(srcdir)
    for name, text in pages.items():
        path = srcdir / f"{name}.rst"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return pages


def _on_builder_inited(app: Sphinx) -> None:
    write_pages(Path(app.srcdir))


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", _on_builder_inited)
    app.add_transform(ClauseAnchors)
    app.config.html_context = {**app.config.html_context, "spec_version": SPEC_VERSION}
    return {"version": SPEC_VERSION, "parallel_read_safe": True, "parallel_write_safe": True}
