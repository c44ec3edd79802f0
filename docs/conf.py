"""Sphinx configuration: the attnspec site, built offline from the clause catalog.

Build: ``sphinx-build -W docs docs/_build`` (``pip install -e '.[docs]'``); open ``docs/_build/index.html``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

from attnspec import SPEC_VERSION  # noqa: E402

project = "attnspec"
author = "the attnspec authors"
copyright = "the attnspec authors, Apache-2.0"
version = release = SPEC_VERSION
html_title = f"attnspec {SPEC_VERSION}"

extensions = ["myst_parser", "sphinx.ext.mathjax", "sphinx-mathjax-offline", "attnspec_docs"]
myst_enable_extensions = ["dollarmath", "amsmath", "substitution"]
myst_substitutions = {"spec_version": SPEC_VERSION}
myst_heading_anchors = 3
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "README.md", "results"]
templates_path = ["_templates"]
html_static_path = []
html_context: dict = {}
html_theme = "alabaster"
html_theme_options = {"description": f"The attention specification, version {SPEC_VERSION}"}
html_show_sourcelink = False
suppress_warnings = ["myst.header"]
