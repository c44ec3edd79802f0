"""The backend under test in this pytest run, and the cases it declined.

The plugin sets :data:`CURRENT` once per session; strategies read the backend's declared
limits from it at draw time, and :func:`decline` records a case the backend refused.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import NoReturn

import hypothesis
import pytest

from attnspec.contract import Backend
from attnspec.tolerance import QuantisedClass


@dataclass
class Target:
    backend: Backend
    spec: str
    dtypes: tuple[str, ...]
    declines: dict = field(default_factory=lambda: defaultdict(list))
    test_id: str = ""
    shapes: str = "all"  # --shapes: "all", "menu" (strategies.MENU_*) or "gpu" (strategies.GPU_*)
    #: The quantised tolerance class the run reports beside the 16-bit verdict (attnspec.tolerance), if any.
    tolerance_class: QuantisedClass | None = None

    @property
    def shape_menu(self) -> bool:
        return self.shapes == "menu"


CURRENT: Target | None = None


def current() -> Target:
    if CURRENT is None:
        raise RuntimeError("no backend under test: run the conformance suite with --backend=NAME")
    return CURRENT


def decline(reason: str) -> NoReturn:
    """Record that the backend refused this case, and move on to the next one."""
    target = current()
    if len(target.declines[target.test_id]) < 20:
        target.declines[target.test_id].append(reason)
    if hypothesis.currently_in_test_context():
        hypothesis.reject()
    pytest.skip(f"declined by the backend: {reason}")
