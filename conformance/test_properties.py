"""Properties that follow from the definitions: symmetry, causality, independence.

Each compares a backend with itself on transformed inputs, so it catches a kernel that is wrong
in a way a single reference comparison at small sizes can miss (indexing that depends on
position, rows reading other rows, batch items mixing).
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from attnspec import reference
from attnspec import tolerance as policy
from attnspec.conformance.calls import call_sdpa
from attnspec.conformance.dtypes import eps
from attnspec.conformance.probes import POISON, check_arrays, visibility
from attnspec.conformance.strategies import lengths, sdpa_cases
from attnspec.conformance.tolerance import Bound, sdpa_bounds


def _unchanged_bound(v, dtype: str) -> Bound:
    vmax = float(np.abs(np.asarray(v, np.float64)).max(initial=1.0))
    return Bound(policy.UNCHANGED_EPS * eps(dtype) * vmax, f"{policy.UNCHANGED_EPS:g} eps({dtype}) x max|v|")


def _bound(q, k, v, options, dtype):
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, **options)
    out_bound, _ = sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse)
    return out_bound.scaled(2, "twice")  # both sides carry rounding error


@pytest.mark.clause("sdpa")
@given(case=sdpa_cases(), data=st.data())
def test_permuting_queries_permutes_outputs(check, dtype, case, data):
    """Without positional information, permuting the queries permutes the output rows."""
    q, k, v, options = case.inputs(dtype)
    perm = np.asarray(data.draw(st.permutations(range(case.n_q))))
    out = check_arrays(check, case, dtype, q, k, v, options)[0]
    permuted, _ = call_sdpa(q[:, :, perm], k, v, options, return_lse=False)
    check.close(
        permuted,
        np.asarray(out, np.float64)[:, :, perm],
        _bound(q, k, v, options, dtype),
        what="out of permuted queries",
        case=case,
    )


@pytest.mark.clause("sdpa")
@given(case=sdpa_cases(), data=st.data())
def test_permuting_keys_and_values_together_changes_nothing(check, dtype, case, data):
    """Without positional information, attention is invariant to a joint permutation of K and V."""
    q, k, v, options = case.inputs(dtype)
    perm = np.asarray(data.draw(st.permutations(range(case.n_k))))
    out = check_arrays(check, case, dtype, q, k, v, options)[0]
    permuted, _ = call_sdpa(q, k[:, :, perm], v[:, :, perm], options, return_lse=False)
    check.close(permuted, out, _bound(q, k, v, options, dtype), what="out of permuted keys", case=case)


@pytest.mark.clause("sdpa.causal.bottom_right")
@given(case=sdpa_cases(causal="bottom_right", magnitudes=("unit",)), n=lengths(40).filter(lambda n: n >= 2))
def test_causal_order_matters(check, dtype, case, n):
    """The converse: under a causal mask, swapping the first and last key changes query 0's output."""
    case = case.with_(n_q=n, n_k=n)  # lengths() already keeps n within the backend's max_seq_len
    q, k, v, options = case.inputs(dtype)
    swap = np.r_[n - 1, 1 : n - 1, 0] if n > 2 else np.array([1, 0])
    assume(np.abs(v[..., 0, :].astype(np.float64) - v[..., n - 1, :].astype(np.float64)).max() > 0.5)
    out, _ = call_sdpa(q, k, v, options, return_lse=False)
    swapped, _ = call_sdpa(q, k[:, :, swap], v[:, :, swap], options, return_lse=False)
    check.differs(
        np.asarray(out)[..., 0, :],
        np.asarray(swapped)[..., 0, :],
        more_than=_bound(q, k, v, options, dtype).value,
        what="query 0's output",
        case=case,
    )


@pytest.mark.clause("sdpa.causal.bottom_right")
@given(case=sdpa_cases(causal="bottom_right", extras=True), data=st.data())
def test_causality_bottom_right(check, dtype, case, data):
    _check_causality(check, dtype, case, data)


@pytest.mark.clause("sdpa.causal.top_left")
@given(case=sdpa_cases(causal="top_left", extras=True), data=st.data())
def test_causality_top_left(check, dtype, case, data):
    _check_causality(check, dtype, case, data)


def _check_causality(check, dtype, case, data):
    """Changing keys and values from position p on (to 1e4), and queries from position r on,
    leaves every row that sees no key at or after p, and comes before r, unchanged."""
    q, k, v, options = case.inputs(dtype)
    p = data.draw(st.integers(0, case.n_k - 1), label="first changed key")
    r = data.draw(st.integers(0, case.n_q), label="first changed query")
    changed_q = q.copy()
    changed_q[:, :, r:] = -changed_q[:, :, r:]
    _check_rows_not_seeing(
        check,
        dtype,
        case,
        (q, k, v, options),
        slice(p, None),
        changed_q=changed_q,
        first_changed_row=r,
        what="rows that see no changed key",
    )


def _check_rows_not_seeing(
    check, dtype, case, inputs, keys: slice, *, what: str, changed_q=None, first_changed_row=None
):
    """Keys ``keys`` hold 1e4 (and queries from ``first_changed_row`` on are ``changed_q``): every
    row that sees none of those keys, and whose query did not change, stays as it was."""
    q, k, v, options = inputs
    poisoned_k, poisoned_v = k.copy(), v.copy()
    poisoned_k[:, :, keys], poisoned_v[:, :, keys] = POISON, POISON
    out = check_arrays(check, case, dtype, q, k, v, options)[0]
    after, _ = call_sdpa(q if changed_q is None else changed_q, poisoned_k, poisoned_v, options, return_lse=False)
    untouched = ~visibility(case, q, k, v, options)[..., keys].any(axis=-1)
    if first_changed_row is not None:
        untouched[:, :, first_changed_row:] = False
    out, after = np.asarray(out, np.float64), np.asarray(after, np.float64)
    check.close(after[untouched], out[untouched], _unchanged_bound(v, dtype), what=what, case=case)


@pytest.mark.clause("sdpa.window")
@given(case=sdpa_cases(window=True, extras=True), data=st.data())
def test_keys_left_of_the_window_do_not_leak(check, dtype, case, data):
    """Keys before position p hold 1e4; every row whose window starts at or after p is unchanged.

    Per-row poisoning: these keys are visible to earlier rows, so the probe that poisons only
    keys hidden from every query cannot reach them."""
    q, k, v, options = case.inputs(dtype)
    p = data.draw(st.integers(1, case.n_k), label="keys before p poisoned")
    _check_rows_not_seeing(
        check, dtype, case, (q, k, v, options), slice(None, p), what=f"rows whose window starts at or after key {p}"
    )


@pytest.mark.clause("sdpa")
@given(case=sdpa_cases(extras=True))
def test_batch_items_are_independent(check, dtype, case):
    """Changing batch item 1 leaves batch item 0 unchanged."""
    case = case.with_(batch=2, q_lens=_two_items(case.q_lens), kv_lens=_two_items(case.kv_lens))
    q, k, v, options = case.inputs(dtype)
    out = check_arrays(check, case, dtype, q, k, v, options)[0]
    q2, k2, v2 = q.copy(), k.copy(), v.copy()
    q2[1], k2[1], v2[1] = -q[1], k[1][:, ::-1], -v[1]
    after, _ = call_sdpa(q2, k2, v2, options, return_lse=False)
    check.close(np.asarray(after)[0], np.asarray(out)[0], _unchanged_bound(v, dtype), what="batch item 0", case=case)


def _two_items(lens):
    return None if lens is None else (lens * 2)[:2]
