"""Source pages: the code of every reference, test and mutant a clause names, at its own anchor."""

from __future__ import annotations

from . import rst
from .facts import Source


def label(source: Source) -> str:
    return f"src-{source.path.replace('/', '-')}-{source.first}"


def link(name: str, source: Source) -> str:
    return f":ref:`{name} <{label(source)}>` (``{source.path}``, line {source.first})"


def page_name(path: str) -> str:
    return "source/" + path.removesuffix(".py").replace("/", ".")


def _section(name: str, source: Source) -> str:
    return (
        f".. _{label(source)}:\n\n"
        + rst.heading(name, "-")
        + f".. literalinclude:: /../{source.path}\n"
        + f"   :language: python\n   :lines: {source.first}-{source.last}\n   :lineno-start: {source.first}\n\n"
    )


def pages(objects: dict[Source, str]) -> dict[str, str]:
    """Page name -> text: one page per file, one section per object, in line order."""
    by_path: dict[str, list[Source]] = {}
    for source in objects:
        by_path.setdefault(source.path, []).append(source)
    out = {}
    for path, sources in sorted(by_path.items()):
        body = "".join(_section(objects[s], s) for s in sorted(set(sources), key=lambda s: s.first))
        out[page_name(path)] = rst.heading(f"``{path}``", "=") + body
    out["source/index"] = rst.heading("Source", "=") + _toctree([page_name(p) for p in sorted(by_path)])
    return out


def _toctree(names: list[str]) -> str:
    return ".. toctree::\n   :maxdepth: 1\n\n" + "".join(f"   /{n}\n" for n in names) + "\n"
