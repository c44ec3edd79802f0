"""Small reStructuredText writers, and the clause docstrings turned into page text."""

from __future__ import annotations

import re
import textwrap
from typing import Any

from sphinx.ext.napoleon import Config, NumpyDocstring

from attnspec.clauses import CATALOG

_NAPOLEON: Any = Config(  # napoleon's own settings object, as its documentation uses it
    napoleon_use_param=True, napoleon_use_rtype=False
)
_LITERAL_ID = re.compile(r"``([a-z0-9_.]+)``")


def heading(text: str, char: str) -> str:
    line = char * max(len(text), 4)
    return f"{line}\n{text}\n{line}\n\n" if char == "=" else f"{text}\n{line}\n\n"


def indent(text: str, by: int = 3) -> str:
    return textwrap.indent(text, " " * by)


def table(header: list[str], rows: list[list[str]], *, widths: str = "auto") -> str:
    """A ``list-table``; empty cells are written as a space so that every row keeps its length."""
    lines = [f".. list-table::\n   :header-rows: 1\n   :widths: {widths}\n\n"]
    for row in [header, *rows]:
        cells = [cell or "\\ " for cell in row]
        lines.append("   * - " + "\n     - ".join(cells) + "\n")
    return "".join(lines) + "\n"


def plain(text: str) -> str:
    """Prose that is not reStructuredText (a test's docstring): markup escaped, double-backtick literals kept."""
    parts = re.split(r"(``[^`]+``)", text)
    return "".join(p if p.startswith("``") else re.sub(r"([\\`*|_])", r"\\\1", p) for p in parts)


def clause_ref(clause_id: str) -> str:
    return f":ref:`{clause_id} <{clause_id}>`"


def _link_line(line: str) -> str:
    return _LITERAL_ID.sub(lambda m: clause_ref(m.group(1)) if m.group(1) in CATALOG else m.group(0), line)


def link_clause_ids(text: str) -> str:
    """``clause.id`` literals become links to the clause, outside literal blocks."""
    out, literal_indent = [], None
    for line in text.splitlines():
        depth = len(line) - len(line.lstrip())
        if literal_indent is not None and line.strip() and depth <= literal_indent:
            literal_indent = None
        out.append(line if literal_indent is not None else _link_line(line))
        if literal_indent is None and line.rstrip().endswith("::"):
            literal_indent = depth
    return "\n".join(out) + "\n"


def docstring(text: str) -> str:
    """A NumPy-style docstring as reStructuredText: Parameters / Returns as fields, Notes a rubric."""
    return link_clause_ids(str(NumpyDocstring(text, _NAPOLEON)))
