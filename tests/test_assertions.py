"""The assertion helpers: what passes, what fails, and what the messages say."""

from __future__ import annotations

import numpy as np
import pytest

from attnspec.conformance.assertions import Checker, ConformanceError, HarnessError
from attnspec.conformance.tolerance import Bound, relative_bound

check = Checker(clause="sdpa.window", backend="k", device="cpu", dtype="bfloat16", reproduce="pytest x")
BOUND = Bound(0.01, "test bound")


def test_within_bound_passes_and_beyond_fails_with_the_worst_element():
    expected = np.zeros((2, 3))
    check.close(expected + 0.009, expected, BOUND, what="out", case="c")
    actual = expected.copy()
    actual[1, 2] = 0.5
    with pytest.raises(ConformanceError) as info:
        check.close(actual, expected, BOUND, what="out", case="c")
    text = str(info.value)
    for part in (
        "[sdpa.window] backend 'k' (bfloat16, cpu)",
        "out(1, 2) = 0.5",
        "error 0.5 > allowed 0.01 (test bound)",
        "1 of 6 elements",
        "reproduce: pytest x",
    ):
        assert part in text


def test_nan_reference_is_a_harness_error_never_a_pass():
    with pytest.raises(HarnessError, match="the reference out holds NaN"):
        check.close(np.zeros(3), np.array([0.0, np.nan, 0.0]), BOUND, what="out", case="c")


def test_non_finite_output_fails_whatever_the_bound():
    with pytest.raises(ConformanceError, match="non-finite where the reference is not"):
        check.close(np.array([0.0, np.inf]), np.zeros(2), Bound(np.inf, "inf"), what="out", case="c")


def test_minus_inf_must_match_exactly():
    check.close(np.array([-np.inf, 1.0]), np.array([-np.inf, 1.0]), BOUND, what="lse", case="c")
    with pytest.raises(ConformanceError):
        check.close(np.array([-1e30, 1.0]), np.array([-np.inf, 1.0]), BOUND, what="lse", case="c")


def test_shape_mismatch():
    with pytest.raises(ConformanceError, match=r"(?s)wrong shape.*got \(3,\), expected \(2,\)"):
        check.close(np.zeros(3), np.zeros(2), BOUND, what="out", case="c")


def test_pattern_names_the_first_wrong_pair():
    expected = np.tril(np.ones((1, 1, 3, 3), bool))
    actual = expected.copy()
    actual[0, 0, 0, 1] = True
    with pytest.raises(ConformanceError, match=r"\(0, 0, 0, 1\): the key gets weight but must be invisible"):
        check.pattern(actual, expected, what="weights", case="c")


def test_pattern_says_when_the_query_sees_no_key_at_all():
    expected = np.zeros((1, 1, 2, 3), bool)
    expected[0, 0, 1] = True
    actual = np.ones_like(expected)
    with pytest.raises(
        ConformanceError, match=r"\(0, 0, 0, 0\): the key gets weight, but this query sees no key at all"
    ):
        check.pattern(actual, expected, what="weights", case="c")


def test_exact_and_differs_and_rejects():
    check.exact(np.array([0.0, -0.0]), np.zeros(2), what="zeros", case="c")
    with pytest.raises(ConformanceError, match="not exactly as specified"):
        check.exact(np.array([0.0, 1e-30]), np.zeros(2), what="zeros", case="c")
    with pytest.raises(ConformanceError, match="did not change"):
        check.differs(np.ones(2), np.ones(2), more_than=0.0, what="out", case="c")
    with pytest.raises(ConformanceError, match="was accepted, but the spec makes it an error"):
        check.rejects(lambda: None, what="a bad call", case="c")
    check.rejects(lambda: 1 / 0, what="a bad call", case="c")


def test_relative_bound_adds_the_floor():
    bound = relative_bound(naive_error=1e-3, scale=2.0, dtype="bfloat16")
    assert bound.value == pytest.approx(3 * 1e-3 + 2 * 2**-7 * 2.0)
