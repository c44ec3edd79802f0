"""Assertions whose failure messages name the clause, backend, dtype, case and worst element.

Tests get a :class:`Checker` from the ``check`` fixture; it knows which clause the test is
reported under, which backend and dtype run, and how to reproduce the test from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np

from attnspec.conformance.quantised import Measured
from attnspec.conformance.tolerance import Bound
from attnspec.tolerance import QuantisedClass


class ConformanceError(AssertionError):
    """A backend result breaks a clause."""

    def with_note(self, line: str) -> ConformanceError:
        """The same failure with ``line`` after its headline (a diagnosis: the report keeps the
        message's first lines, so it goes near the top)."""
        headline, _, rest = str(self).partition("\n")
        return ConformanceError(f"{headline}\n  {line}\n{rest}")


class HarnessError(AssertionError):
    """The suite itself produced something unusable (a non-finite reference): never a pass."""


@dataclass(frozen=True)
class Checker:
    clause: str
    backend: str
    device: str
    dtype: str
    reproduce: str
    #: A quantised tolerance class the run selected: comparisons whose bound has a counterpart under
    #: it are asserted at that one, and their errors against the 16-bit bound go to ``measured``.
    tolerance_class: QuantisedClass | None = None
    measured: Measured | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"Checker({self.clause!r}, {self.backend!r}, {self.dtype!r})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))

    def fail(self, headline: str, case, details: str) -> NoReturn:
        """Report that the backend broke this test's clause: ``headline``, the case, ``details``."""
        __tracebackhide__ = True
        raise ConformanceError(self.message(headline, case, details))

    def message(self, headline: str, case, details: str) -> str:
        return (
            f"[{self.clause}] backend {self.backend!r} ({self.dtype}, {self.device}): {headline}\n"
            f"  case: {case!r}\n  {details}\n  reproduce: {self.reproduce}"
        )

    def close(self, actual, expected, bound: Bound, *, what: str, case) -> None:
        """``max|actual - expected| <= bound``; non-finite where ``expected`` is finite fails."""
        __tracebackhide__ = True
        actual, expected = _as_float64(actual), _as_float64(expected)
        self.same_shape(actual, expected, what=what, case=case)
        if np.isnan(expected).any():
            raise HarnessError(
                f"[{self.clause}] the reference {what} holds NaN at "
                f"{_index(np.argwhere(np.isnan(expected))[0])} for {case!r}"
            )
        mismatch = nonfinite_mismatch(actual, expected)
        if mismatch.any():
            at = _index(np.argwhere(mismatch)[0])
            self.fail(
                f"{what} is non-finite where the reference is not (or the reverse)",
                case,
                f"first such element: {what}{at} = {actual[at]:.6g} (reference {expected[at]:.6g}); "
                f"{int(mismatch.sum())} such elements",
            )
        err = finite_error(actual, expected)
        bound = self._asserted(bound, float(err.max(initial=0.0)), what, case)
        if err.size and err.max() > bound.value:
            at = _index(np.unravel_index(np.argmax(err), err.shape))
            self.fail(
                f"{what} differs from the float64 reference",
                case,
                f"worst element: {what}{at} = {actual[at]:.6g}, reference {expected[at]:.6g}, "
                f"error {err[at]:.3g} > allowed {bound}; {int((err > bound.value).sum())} of "
                f"{err.size} elements out of bound",
            )

    def _asserted(self, bound: Bound, error: float, what: str, case) -> Bound:
        """The bound a comparison is asserted at: ``bound``, or under a quantised class its
        counterpart, with the error against ``bound`` recorded (the 16-bit verdict, kept apart)."""
        if self.tolerance_class is None or bound.quantised is None:
            return bound
        widened = bound.quantised(self.tolerance_class)
        if self.measured is not None:
            details = (
                f"error {error:.3g} > allowed {bound}; the {self.tolerance_class.name} class allows {widened.value:.3g}"
            )
            headline = f"{what} differs from the float64 reference beyond the 16-bit bound"
            self.measured.add(error, bound.value, widened.value, lambda: self.message(headline, case, details))
        return widened

    def exact(self, actual, expected, *, what: str, case) -> None:
        """Element-wise equality (integers, gathers, exact zeros and -inf)."""
        __tracebackhide__ = True
        actual, expected = np.asarray(actual), np.asarray(expected)
        self.same_shape(actual, expected, what=what, case=case)
        wrong = actual != expected
        if actual.dtype.kind == "f" and expected.dtype.kind == "f":
            wrong &= ~(np.isnan(actual) & np.isnan(expected))
        if wrong.any():
            at = _index(np.argwhere(wrong)[0])
            self.fail(
                f"{what} is not exactly as specified",
                case,
                f"first wrong element: {what}{at} = {actual[at]!r}, expected {expected[at]!r}; "
                f"{int(wrong.sum())} of {wrong.size} elements wrong",
            )

    def pattern(self, actual: np.ndarray, expected: np.ndarray, *, what: str, case) -> None:
        """Boolean patterns (which keys carry weight) must match exactly."""
        __tracebackhide__ = True
        self.same_shape(actual, expected, what=what, case=case)
        wrong = actual != expected
        if wrong.any():
            at = _index(np.argwhere(wrong)[0])
            verb = "gets weight but must be invisible" if actual[at] else "gets no weight but is visible"
            if actual[at] and not expected[at[:-1]].any():
                verb = "gets weight, but this query sees no key at all (a fully masked row: every weight 0)"
            self.fail(
                f"{what}: the attention pattern is wrong",
                case,
                f"first wrong (b, h, query, key) = {at}: the key {verb}; "
                f"{int(wrong.sum())} of {wrong.size} pairs wrong",
            )

    def differs(self, a, b, *, more_than: float, what: str, case) -> None:
        """``max|a - b| > more_than``: the change must be visible in the result."""
        __tracebackhide__ = True
        diff = float(np.abs(_as_float64(a) - _as_float64(b)).max(initial=0.0))
        if not diff > more_than:
            self.fail(f"{what} did not change", case, f"largest change {diff:.3g} <= {more_than:.3g}")

    def rejects(self, fn, *, what: str, case) -> None:
        """``fn()`` must raise an error (an ``Unsupported`` decline does not count)."""
        __tracebackhide__ = True
        from attnspec.contract import Unsupported

        try:
            fn()
        except Unsupported as exc:
            self.fail(f"{what} was declined, but the spec makes it an error", case, f"Unsupported: {exc}")
        except Exception:
            return
        self.fail(f"{what} was accepted, but the spec makes it an error", case, "no exception was raised")

    def same_shape(self, actual, expected, *, what: str, case) -> None:
        __tracebackhide__ = True
        if np.shape(actual) != np.shape(expected):
            self.fail(f"{what} has the wrong shape", case, f"got {np.shape(actual)}, expected {np.shape(expected)}")


def nonfinite_mismatch(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Where ``actual`` is non-finite and ``expected`` is not, or the reverse, or a different
    non-finite value (the comparison of :meth:`Checker.close` before any bound)."""
    mismatch = np.isfinite(expected) != np.isfinite(actual)
    return mismatch | (~np.isfinite(expected) & (actual != expected))


def finite_error(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``|actual - expected|`` where ``expected`` is finite, else 0."""
    with np.errstate(invalid="ignore"):  # inf - inf where both are -inf
        return np.where(np.isfinite(expected), np.abs(actual - expected), 0.0)


def _as_float64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def _index(at) -> tuple:
    return tuple(int(i) for i in at)
