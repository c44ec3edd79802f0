"""The documentation site builds offline with warnings as errors, every clause has its ID as an
anchor, and every internal link resolves (issue 17). Skipped without the ``docs`` extra."""

from __future__ import annotations

import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("myst_parser", reason="the docs extra is not installed: pip install -e '.[docs]'")

from sphinx.cmd.build import build_main  # noqa: E402

from attnspec import CATALOG, SPEC_VERSION  # noqa: E402

# One worker builds the site: the build writes the generated pages into docs/ itself.
pytestmark = pytest.mark.xdist_group("docs")

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS / "_ext"))


class _Page(HTMLParser):
    """The ids, the links and the external scripts of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"] or "")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[Path, _Page]:
    """Page path relative to the built site -> its parsed HTML; built with warnings as errors."""
    out = tmp_path_factory.mktemp("site")
    assert build_main(["-W", "-q", "-b", "html", "-d", str(out / ".doctrees"), str(DOCS), str(out)]) == 0
    pages = {}
    for path in out.rglob("*.html"):
        page = _Page()
        page.feed(path.read_text())
        pages[path.relative_to(out)] = page
    pages[Path(".root")] = _Page()  # where the site was built, for the file checks below
    pages[Path(".root")].links = [str(out)]
    return pages


def test_generator_gives_every_clause_a_labelled_section():
    from attnspec_docs.site import generate

    pages = generate(DOCS)
    for c in CATALOG.values():
        assert f"\n.. _{c.id}:\n" in "\n" + pages[c.section], c.id


def test_no_formula_is_stale():
    from attnspec_docs import formulas

    assert formulas.stale() == [], "a clause's text changed: update its formula in docs/_ext/attnspec_docs/formulas.py"


def test_every_clause_has_its_rule_in_math():
    from attnspec_docs import formulas

    missing = [cid for cid in CATALOG if cid not in formulas.FORMULAS and cid not in formulas.NONE]
    assert missing == [], "write their formulas in docs/_ext/attnspec_docs/formulas_*.py (or say in NONE why not)"
    assert all(formulas.math(cid) for cid in CATALOG if cid not in formulas.NONE)


def test_formulas_are_well_formed_tex():
    """MathJax reports TeX errors in the browser only, so the build cannot: the two we can see here."""
    from attnspec_docs import formulas

    for cid, (_, tex) in formulas.FORMULAS.items():
        depth = 0
        for ch in re.sub(r"\\[{}]", "", tex):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, f"{cid}: unbalanced braces"
        assert depth == 0, f"{cid}: unbalanced braces"
        # Outside an environment, "&" aligns lines: Sphinx wraps a display in `split` only if it has a line break.
        top = re.sub(r"\\begin\{(\w+)\}.*?\\end\{\1\}", "", tex, flags=re.S)
        assert "&" not in top or "\\\\" in top, f"{cid}: '&' in a display without a line break"


def test_every_clause_is_at_its_id_on_its_family_page(site):
    missing = [c.id for c in CATALOG.values() if c.id not in site[Path(f"{c.section}.html")].ids]
    assert missing == []
    print(f"{len(site) - 1} pages, {len(CATALOG)} clause anchors")


def _target(page: Path, link: str) -> tuple[Path, str]:
    target, _, fragment = link.split("?")[0].partition("#")
    return (Path(os.path.normpath(page.parent / target)) if target else page), fragment


def test_every_internal_link_resolves(site):
    broken = []
    for path, page in site.items():
        for link in page.links if path.suffix == ".html" else ():
            file, fragment = _target(path, link)
            if re.match(r"[a-z]+:", link) or file.suffix != ".html":
                continue
            if file not in site or (fragment and fragment not in site[file].ids):
                broken.append(f"{path}: {link}")
    assert broken == []


def test_offline_and_versioned(site):
    root = Path(site[Path(".root")].links[0])
    for path, page in site.items():
        if path.suffix != ".html":
            continue
        assert all((root / _target(path, src)[0]).is_file() for src in page.scripts), (path, page.scripts)
        assert f"version <strong>{SPEC_VERSION}</strong>" in (root / path).read_text(), path
