"""Conformance of retention (spec section :mod:`attnspec.retention`)."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attnspec.conformance.bounds import retention_bounds
from attnspec.conformance.calls import call
from attnspec.conformance.dtypes import numpy_dtype
from attnspec.conformance.memory import check_linear_memory
from attnspec.conformance.retention_cases import RetentionCase, gamma_dtype, retention_cases
from attnspec.conformance.target import current, decline
from attnspec.reference.retention import retention, retention_decays

POISON = 1e4


def _options(kwargs: dict) -> dict:
    """The arguments that define the result (every form must give the parallel form's)."""
    return {n: kwargs[n] for n in ("gammas", "scale", "initial_state")}


def _call(check, case, q, k, v, kwargs, *, return_state: bool):
    result = call("retention", q, k, v, return_state=return_state or None, **kwargs)
    if return_state and not (isinstance(result, tuple) and len(result) == 2):
        check.fail("retention(return_state=True) did not return (out, state)", case, f"got {type(result).__name__}")
    return result


def within_limits(case: RetentionCase) -> None:
    """Decline a case (a pinned example, say) beyond the backend's declared limits."""
    backend = current().backend
    if backend.max_seq_len is not None and case.n > backend.max_seq_len:
        decline(f"N = {case.n} is beyond the declared max_seq_len {backend.max_seq_len}")
    if backend.max_head_dim is not None and max(case.d_k, case.d_v) > backend.max_head_dim:
        decline(f"D = {max(case.d_k, case.d_v)} is beyond the declared max_head_dim {backend.max_head_dim}")


def check_retention(check, dtype, case: RetentionCase, *, with_state: bool = False):
    """The backend's form of ``case`` against the parallel form in float64: output, and state if asked."""
    __tracebackhide__ = True
    within_limits(case)
    q, k, v, kwargs = case.inputs(dtype)
    ref_out, ref_state = retention(q, k, v, **_options(kwargs), return_state=True)
    out_bound, state_bound = retention_bounds(q, k, v, kwargs, dtype, ref_out, ref_state)
    result = _call(check, case, q, k, v, kwargs, return_state=with_state)
    out = result[0] if with_state else result
    check.close(out, ref_out, out_bound, what="out", case=case)
    if with_state:
        check.close(result[1], ref_state, state_bound, what="final state", case=case)


def check_causal(check, dtype, case: RetentionCase, last: int):
    """Positions after ``last`` hold ``1e4`` in q, k and v; rows ``0 .. last`` must not change."""
    __tracebackhide__ = True
    within_limits(case)
    q, k, v, kwargs = case.inputs(dtype)
    seen = last + 1
    poisoned = [x.copy() for x in (q, k, v)]
    for x in poisoned:
        x[:, :, seen:] = np.asarray(POISON, dtype=numpy_dtype(dtype))
    out = np.asarray(_call(check, case, *poisoned, kwargs, return_state=False))
    prefix = [x[:, :, :seen] for x in (q, k, v)]
    ref_out, ref_state = retention(*prefix, **_options(kwargs), return_state=True)
    bound, _ = retention_bounds(*prefix, kwargs, dtype, ref_out, ref_state)
    check.close(
        out[:, :, :seen], ref_out, bound, what=f"out[:, :, :{seen}] with positions >= {seen} poisoned", case=case
    )


@pytest.mark.clause("retention.parallel")
@given(case=retention_cases())
@example(case=RetentionCase(heads=3, n=17, gammas=(0.0, 1e-3, 1.0), seed=1))
@example(case=RetentionCase(heads=2, n=129, d_k=16, gammas=(0.5, 0.96875), seed=2))
@example(case=RetentionCase(heads=2, n=140, gammas=(1e-3, 1 - 2.0**-9), seed=9))
@example(case=RetentionCase(batch=2, heads=2, n=0, gammas=(0.5, 1.0)))
def test_parallel(check, dtype, case):
    """Decays per head, g^0 = 1 for g = 0, g = 1 without a normaliser, underflow for long runs.

    With g = 1e-3 and N = 140, g^(n - m) underflows in float64 too (to 0 from n - m = 108, below
    the smallest subnormal 4.9e-324); with N = 129, 0.5^(n - m) leaves float32's normal range. The
    decay 1 - 2^-9 is 1.0 in bfloat16: a kernel that rounds gammas to its input dtype loses it.
    """
    check_retention(check, dtype, case)


@pytest.mark.clause("retention.recurrent")
@given(case=retention_cases(form="recurrent"))
@example(case=RetentionCase(heads=2, n=17, gammas=(0.9, 1.0), form="recurrent", seed=3))
@example(case=RetentionCase(heads=2, n=140, gammas=(1e-3, 1 - 2.0**-9), form="recurrent", seed=9))
def test_recurrent(check, dtype, case):
    check_retention(check, dtype, case)


@pytest.mark.clause("retention.chunkwise")
@given(case=retention_cases(form="chunkwise"))
@example(case=RetentionCase(heads=2, n=65, gammas=(0.9, 1e-3), form="chunkwise", chunk_size=64, seed=4))
@example(case=RetentionCase(heads=1, n=17, gammas=(0.5,), form="chunkwise", chunk_size=5, seed=5))
@example(case=RetentionCase(heads=2, n=140, gammas=(1e-3, 1 - 2.0**-9), form="chunkwise", chunk_size=130, seed=9))
def test_chunkwise(check, dtype, case):
    """Every chunk size, also ones that do not divide N (a short last chunk) or exceed it.

    A chunk of 130 with g = 1e-3 takes g^(r - s) past float64's underflow (and g^(-s) past its
    overflow, for a kernel that factorises the decay)."""
    check_retention(check, dtype, case)


@pytest.mark.clause("retention.parallel")
@given(case=retention_cases(), data=st.data())
def test_parallel_is_causal(check, dtype, case, data):
    check_causal(check, dtype, case, data.draw(st.integers(0, max(case.n - 1, 0)), label="last"))


@pytest.mark.clause("retention.recurrent")
@given(case=retention_cases(form="recurrent"), data=st.data())
def test_recurrent_is_causal(check, dtype, case, data):
    check_causal(check, dtype, case, data.draw(st.integers(0, max(case.n - 1, 0)), label="last"))


@pytest.mark.clause("retention.chunkwise")
@given(case=retention_cases(form="chunkwise"), data=st.data())
def test_chunkwise_is_causal(check, dtype, case, data):
    check_causal(check, dtype, case, data.draw(st.integers(0, max(case.n - 1, 0)), label="last"))


@pytest.mark.clause("retention.state")
@given(case=retention_cases(form=None, initial_state=True))
@example(case=RetentionCase(heads=2, n=9, gammas=(0.5, 1.0), form="recurrent", initial_state=True, seed=6))
@example(case=RetentionCase(heads=1, n=0, gammas=(0.9,), form="chunkwise", chunk_size=3, initial_state=True))
def test_initial_and_final_state(check, dtype, case):
    """S0 reaches out[n] decayed by g^(n+1); the final state is S_(N-1) (S0 itself when N = 0)."""
    check_retention(check, dtype, case, with_state=True)


@pytest.mark.clause("retention.state")
@given(case=retention_cases(form=None), data=st.data())
@example(case=RetentionCase(heads=2, n=12, gammas=(0.5, 0.9), form="parallel", seed=7), data=None)
def test_two_parts_with_the_state_passed_on(check, dtype, case, data):
    """Chunked prefill: the second part, started from the first part's returned state, continues it."""
    within_limits(case)
    q, k, v, kwargs = case.inputs(dtype)
    cut = data.draw(st.integers(0, case.n), label="cut") if data else case.n // 3
    state = kwargs["initial_state"]
    for part, rows in (("first", slice(0, cut)), ("second", slice(cut, case.n))):
        args = [x[:, :, rows] for x in (q, k, v)]
        given_kwargs = {**kwargs, "initial_state": state}
        ref_out, ref_state = retention(*args, **_options(given_kwargs), return_state=True)
        out_bound, state_bound = retention_bounds(*args, given_kwargs, dtype, ref_out, ref_state)
        out, state = _call(check, case, *args, given_kwargs, return_state=True)
        where = f"split at {cut}: {part} part"
        check.close(out, ref_out, out_bound, what=f"out ({where})", case=case)
        check.close(state, ref_state, state_bound, what=f"state ({where})", case=case)


@pytest.mark.clause("retention.multiscale")
@given(num_heads=st.one_of(st.integers(1, 24), st.sampled_from([32, 48, 49, 64])))
@example(num_heads=8)
def test_decays(check, dtype, num_heads):
    """gammas[h] = 1 - 2^(-5 - h), in head order, exact after rounding to the dtype of gammas
    (float32 with 16-bit inputs, where rounding to the input dtype would make heads 4 on all 1.0)."""
    host = gamma_dtype(dtype)
    out = np.asarray(call("retention_decays", num_heads)).astype(np.float64).astype(host)
    check.exact(out, retention_decays(num_heads).astype(host), what="gammas", case=dict(num_heads=num_heads))


@pytest.mark.clause("retention.cost")
@pytest.mark.parametrize("form", ["recurrent", "chunkwise"])
def test_memory_is_linear(check, dtype, form):
    """Peak memory of the recurrent and chunkwise forms grows linearly in N: x4 in N stays under x8."""

    def build(n):
        case = RetentionCase(
            heads=2,
            n=n,
            d_k=16,
            d_v=16,
            gammas=(0.96875, 0.984375),
            form=form,
            chunk_size=64 if form == "chunkwise" else None,
        )
        q, k, v, kwargs = case.inputs(dtype)
        return (q, k, v), kwargs, case

    check_linear_memory(check, "retention", build)
