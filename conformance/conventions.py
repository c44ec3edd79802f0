"""Convention diagnosis: when a result differs from the spec, which named alternative it matches.

Kernels are most often wrong by following another project's convention: causal aligned to the
other corner, the LSE kept in base 2, the scale taken from ``D_v``, GQA heads tiled instead of
grouped, the softcap applied after the mask. "matches ``sdpa.causal.top_left``" tells a kernel
author more than "differs", so a failing comparison recomputes each named alternative in float64
and says which one, if any, the backend's result is within the same bound of.

The alternatives are the mutants that carry a ``convention`` (``attnspec.backends.mutants``):
each is a float64 implementation of one such convention, and the suite already proves it fails;
run in float64, it is the alternative's oracle. ``tests/test_mutants.py`` proves that each is
diagnosed by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from attnspec.backends.mutants import MUTANTS
from attnspec.conformance.assertions import ConformanceError, finite_error, nonfinite_mismatch


def _defines(cls: type, op: str) -> bool:
    """Whether a mutant class (not the numpy backend it derives from) defines ``op``."""
    from attnspec.backends.mutants.base import Mutant

    return any(op in vars(c) for c in cls.__mro__ if issubclass(c, Mutant) and c is not Mutant)


def matching(op: str, compute: Callable[[Any], Any], matches: Callable[[Any], bool]) -> list[str]:
    """The names of the conventions whose result ``compute(alternative)`` the backend's ``matches``."""
    found = []
    for cls in MUTANTS.values():
        name = getattr(cls, "convention", None)
        if not name or not _defines(cls, op):
            continue
        try:
            with np.errstate(all="ignore"):
                result = compute(cls())
        except Exception:  # the alternative does not apply to this case (its own argument checks)
            continue
        if matches(result):
            found.append(name)
    return found


def note(names: list[str]) -> str:
    """The diagnosis line of a failure message."""
    if not names:
        return "diagnosis: matches none of the named alternative conventions"
    return "diagnosis: " + "; ".join(f"matches {name}" for name in names)


def within(actual, expected, bound: float) -> bool:
    """``actual`` equals ``expected`` where it is not finite and is within ``bound`` elsewhere."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape or nonfinite_mismatch(actual, expected).any():
        return False
    return bool(finite_error(actual, expected).max(initial=0.0) <= bound)


def final_run() -> bool:
    """Whether this call is the one whose failure is reported: outside Hypothesis, an explicit
    example, or the replay of the shrunk case. The explanations (this diagnosis, option isolation)
    rerun the case several times, so Hypothesis's search and shrinking skip them."""
    from hypothesis.control import current_build_context, currently_in_test_context

    return not currently_in_test_context() or current_build_context().is_final


@contextmanager
def diagnosis(op: str, compute: Callable[[Any], Any], matches: Callable[[Any], bool]) -> Iterator[None]:
    """Around the checks of one result of ``op``: a failure is re-raised with its diagnosis line."""
    __tracebackhide__ = True
    try:
        yield
    except ConformanceError as exc:
        if not final_run():
            raise
        raise exc.with_note(note(matching(op, compute, matches))) from None


def close_to(actual, bound: float) -> Callable[[Any], bool]:
    """A ``matches`` for results compared within ``bound``."""
    return lambda alternative: within(actual, alternative, bound)


def equal_to(actual) -> Callable[[Any], bool]:
    """A ``matches`` for results compared exactly (integers: T5 buckets)."""
    return lambda alternative: np.array_equal(np.asarray(actual), np.asarray(alternative))
