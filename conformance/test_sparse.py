"""Conformance of sparse and structured attention (spec section :mod:`attnspec.sparse`).

Every pattern is checked against its definition four ways: ``sparse`` numerically against dense
attention with the reference's mask table (output, and the LSE where the backend declares
``sdpa.lse``); the attention pattern read exactly through a one-hot V (so a kernel with the right
table applied wrongly fails too); for causal patterns, keys after a cut poisoned with ``1e4`` leave
the rows before it unchanged; and the backend's own ``sparse_mask`` table (clause ``sparse.mask``).
Under clause ``sparse``, for every pattern, keys invisible to a few chosen rows are poisoned with
``1e4`` and those rows must not change. Clause ``sparse.cost`` bounds the peak memory of the
budgeted patterns.
"""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attnspec import reference
from attnspec.conformance.calls import call, call_unguarded
from attnspec.conformance.dtypes import numpy_dtype
from attnspec.conformance.memory import check_linear_memory
from attnspec.conformance.probes import POISON, within_limits
from attnspec.conformance.sparse_cases import (
    BUDGETED,
    CASES,
    EDGES,
    EMPTY_ROWS,
    PATTERNS,
    SparseCase,
    any_pattern_cases,
    budgeted_params,
    sparse_cases,
)
from attnspec.conformance.strategies import declares
from attnspec.conformance.target import current, decline
from attnspec.conformance.tolerance import sdpa_bounds
from attnspec.reference import sparse as sparse_ref


def reference_table(case: SparseCase) -> np.ndarray:
    return sparse_ref.sparse_mask(case.pattern, case.n_q, case.n_k, **case.pattern_params())


def pattern_declared(case: SparseCase) -> None:
    """Decline a case of clause ``sparse`` whose pattern's own clause the backend does not declare."""
    if not declares(f"sparse.{case.pattern}"):
        decline(f"pattern {case.pattern!r}: the backend does not declare clause sparse.{case.pattern}")


def call_sparse(check, case: SparseCase, q, k, v, kwargs: dict):
    """``(out, lse)`` from the backend's ``sparse``; the LSE is asked for (and checked) only where the
    backend declares ``sdpa.lse``, as for ``sdpa``; else ``lse`` is None."""
    __tracebackhide__ = True
    if not declares("sdpa.lse"):
        return sparse_out(q, k, v, kwargs), None
    result = call("sparse", q, k, v, return_lse=True, **kwargs)
    if not isinstance(result, tuple) or result[1] is None:
        check.fail("sparse returned no LSE", case, "it was called with return_lse=True")
    return result


def sparse_out(q, k, v, kwargs: dict) -> np.ndarray:
    """The output alone (the structural probes do not need the LSE)."""
    result = call("sparse", q, k, v, **kwargs)
    return np.asarray(result[0] if isinstance(result, tuple) else result, np.float64)


def check_against_dense(check, case: SparseCase, dtype: str):
    """``sparse`` against dense attention with the reference table: output, and LSE if declared."""
    __tracebackhide__ = True
    q, k, v, kwargs = case.inputs(dtype)
    table = reference_table(case)
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, mask=table, scale=case.scale)
    bound_out, bound_lse = sdpa_bounds(q, k, v, {"mask": table, "scale": case.scale}, dtype, ref_out, ref_lse)
    out, lse = call_sparse(check, case, q, k, v, kwargs)
    check.close(out, ref_out, bound_out, what="out", case=case)
    if lse is not None:
        check.close(lse, ref_lse, bound_lse, what="lse", case=case)
    return table, ref_out, bound_out


def check_pattern_case(check, case: SparseCase, dtype: str) -> None:
    """Against dense attention, through one-hot V and, if causal, with later keys poisoned."""
    __tracebackhide__ = True
    within_limits(case)
    table, ref_out, bound_out = check_against_dense(check, case, dtype)
    check_one_hot(check, case, dtype, table)
    if case.causal:
        check_later_keys_ignored(check, case, dtype, ref_out, bound_out)


def check_one_hot(check, case: SparseCase, dtype: str, table: np.ndarray) -> None:
    """Zero queries and one-hot values: ``out[b, h, i, j]`` is row ``i``'s weight on key ``j``.

    Every visible key gets ``1 / |V(i)|`` and every invisible key exactly 0, so the keys carrying
    weight must be the table's exactly.
    """
    __tracebackhide__ = True
    q, k, v, kwargs = case.inputs(dtype)
    q = np.zeros_like(q)
    width = min(case.n_k, current().backend.max_head_dim or case.n_k)
    weights = []
    for start in range(0, case.n_k, width):  # V one-hot for keys [start, start + width)
        keys = np.arange(start, min(start + width, case.n_k))
        one_hot = np.zeros((case.n_k, width), dtype=v.dtype)
        one_hot[keys, keys - start] = 1
        v = np.broadcast_to(one_hot, (case.batch, case.h_kv) + one_hot.shape).copy()
        weights.append(sparse_out(q, k, v, kwargs)[..., : len(keys)])
    check.pattern(
        np.concatenate(weights, axis=-1) != 0,
        np.broadcast_to(table, (case.batch, case.h_q, case.n_q, case.n_k)),
        what="weights read through one-hot V",
        case=case,
    )


def check_later_keys_ignored(check, case: SparseCase, dtype: str, ref_out, bound) -> None:
    """Keys after a cut hold ``1e4`` in K and V; rows at positions up to the cut stay unchanged.

    For prefix-LM a row also reads the rest of its prefix, so the cut of batch item ``b`` is
    ``max(cut, prefix_lens[b] - 1)``.
    """
    __tracebackhide__ = True
    if case.n_q < 2:
        return
    q, k, v, kwargs = case.inputs(dtype)
    offset = case.n_k - case.n_q
    cut = int(np.random.default_rng([case.seed, 2]).integers(offset, case.n_k - 1))  # in [offset, N_k - 2]
    cuts = np.full(case.batch, cut)
    if case.pattern == "prefix_lm":
        cuts = np.maximum(cuts, np.broadcast_to(kwargs["prefix_lens"], (case.batch,)) - 1)
    poison = np.asarray(POISON, dtype=numpy_dtype(dtype))
    for b, last in enumerate(cuts):
        k[b, :, last + 1 :], v[b, :, last + 1 :] = poison, poison
    checked = (offset + np.arange(case.n_q))[None, :] <= cuts[:, None]  # (B, N_q)
    kept = np.where(checked[:, None, :, None], sparse_out(q, k, v, kwargs), ref_out)
    rows = f"max({cut}, prefix_lens[b] - 1)" if case.pattern == "prefix_lm" else str(cut)
    check.close(kept, ref_out, bound, what=f"out of rows at positions <= {rows}, later keys 1e4", case=case)


def pinned(pattern: str):
    """Run the pattern's sharp edges (:data:`EDGES`) before the drawn cases."""

    def decorate(test):
        for case in reversed(EDGES[pattern]):
            test = example(case=case)(test)
        return test

    return decorate


def pattern_test(pattern: str):
    """The test of clause ``sparse.<pattern>``: drawn and pinned cases through :func:`check_pattern_case`.

    One is made per registered pattern (:data:`attnspec.conformance.sparse_cases.CASES`); its
    docstring is that of the pattern's parameter strategy.
    """

    def test(check, dtype, case):
        check_pattern_case(check, case, dtype)

    test.__name__ = test.__qualname__ = f"test_{pattern}"
    test.__doc__ = CASES[pattern].doc
    return pytest.mark.clause(f"sparse.{pattern}")(given(case=sparse_cases(pattern))(pinned(pattern)(test)))


for _pattern in PATTERNS:
    globals()[f"test_{_pattern}"] = pattern_test(_pattern)


def probes(test):
    """Pin each pattern's probe edge (``CASES[p].edges[CASES[p].probe]``)."""
    for cases in reversed(CASES.values()):
        test = example(case=cases.edges[cases.probe])(test)
    return test


@pytest.mark.clause("sparse")
@given(case=any_pattern_cases(shorter_queries=True))
@example(case=SparseCase("chunked", n_q=1, n_k=9, params=(("chunk", 4),)))
@example(case=SparseCase("prefix_lm", n_q=2, n_k=6, params=(("prefix_lens", (3,)),)))
def test_rows_align_bottom_right(check, dtype, case):
    """With N_q < N_k, row i is at position i + N_k - N_q: the last rows of the full pass."""
    pattern_declared(case)
    within_limits(case)
    check_against_dense(check, case, dtype)


@pytest.mark.clause("sparse")
@given(case=sparse_cases("block_sparse"))
@example(case=EMPTY_ROWS)
def test_rows_without_keys(check, dtype, case):
    """A row whose layout row is empty outputs exactly zero with LSE -inf (sdpa.fully_masked)."""
    pattern_declared(case)
    within_limits(case)
    q, k, v, kwargs = case.inputs(dtype)
    out, lse = call_sparse(check, case, q, k, v, kwargs)
    empty = ~np.broadcast_to(reference_table(case), (case.batch, case.h_q, case.n_q, case.n_k)).any(axis=-1)
    count = int(empty.sum())
    check.exact(
        np.asarray(out, np.float64)[empty], np.zeros((count, case.d_v)), what="out of rows without keys", case=case
    )
    if lse is not None:
        check.exact(
            np.asarray(lse, np.float64)[empty], np.full(count, -np.inf), what="lse of rows without keys", case=case
        )


def probe_rows(case: SparseCase, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, unseen)``: one to three rows drawn from the seed, and the keys none of them sees.

    ``unseen`` is ``(B, H_kv, N_k)``: keys invisible to every chosen row of every query head that
    reads the key/value head. Rows are drawn among those that miss a key, and cut back to one if
    together they see every key, so something is poisoned whenever some row misses a key.
    """
    group = case.h_q // case.h_kv
    by_kv = table.reshape(case.batch, case.h_kv, group, case.n_q, case.n_k).any(axis=2)  # (B, H_kv, N_q, N_k)
    missing = np.flatnonzero(~by_kv.all(axis=-1).all(axis=(0, 1)))
    if missing.size == 0:
        return missing, np.zeros((case.batch, case.h_kv, case.n_k), dtype=bool)
    rng = np.random.default_rng([case.seed, 3])
    rows = np.sort(rng.choice(missing, size=min(missing.size, int(rng.integers(1, 4))), replace=False))
    unseen = ~by_kv[:, :, rows].any(axis=2)
    if not unseen.any():
        rows = rows[:1]
        unseen = ~by_kv[:, :, rows].any(axis=2)
    return rows, unseen


@pytest.mark.clause("sparse")
@given(case=any_pattern_cases())
@probes
def test_invisible_keys_do_not_count(check, dtype, case):
    """Keys that chosen rows cannot see hold 1e4 in K and V; those rows must not change.

    Every pattern, causal or not (clause ``sparse``: a finite value at any invisible key leaves the
    output unchanged). A kernel that masks with a finite penalty (``-1e4`` added to masked scores)
    passes the other probes; here an invisible key whose score beats the visible ones by ``1e4``
    leaks in.
    """
    pattern_declared(case)
    within_limits(case)
    q, k, v, kwargs = case.inputs(dtype)
    table = np.broadcast_to(reference_table(case), (case.batch, case.h_q, case.n_q, case.n_k))
    rows, unseen = probe_rows(case, table)
    if not unseen.any():
        return  # every row sees every key: nothing is invisible
    ref_out, ref_lse = reference.sdpa(q[:, :, rows], k, v, return_lse=True, mask=table[:, :, rows], scale=case.scale)
    bound, _ = sdpa_bounds(
        q[:, :, rows], k, v, {"mask": table[:, :, rows], "scale": case.scale}, dtype, ref_out, ref_lse
    )
    poison = np.asarray(POISON, dtype=numpy_dtype(dtype))
    k[unseen], v[unseen] = poison, poison
    out = sparse_out(q, k, v, kwargs)[:, :, rows]
    check.close(
        out,
        ref_out,
        bound,
        what=f"out of rows {rows.tolist()} with the {int(unseen.sum())} (b, h_kv, key) "
        f"entries none of them sees set to 1e4",
        case=case,
    )


@pytest.mark.clause("sparse")
@pytest.mark.parametrize("pattern", PATTERNS)
def test_rejects_more_queries_than_keys(check, dtype, pattern):
    """N_q > N_k has no bottom-right alignment: an error, never a guess."""
    case = EDGES[pattern][0]
    pattern_declared(case)
    q, k, v, kwargs = case.with_(n_q=case.n_k + 1).inputs(dtype)
    check.rejects(
        lambda: call_unguarded("sparse", q, k, v, **kwargs), what=f"N_q = {case.n_k + 1} > N_k = {case.n_k}", case=case
    )


def check_mask_table(check, case: SparseCase) -> None:
    __tracebackhide__ = True
    got = np.asarray(call("sparse_mask", case.pattern, case.n_q, case.n_k, **case.pattern_params()))
    if got.dtype != np.bool_:
        check.fail("sparse_mask is not boolean", case, f"dtype {got.dtype}")
    check.pattern(got, reference_table(case), what="sparse_mask table", case=case)


@pytest.mark.clause("sparse.mask")
@pytest.mark.parametrize("pattern", PATTERNS)
@given(data=st.data())
def test_mask_table(check, dtype, pattern, data):
    """The table is exact, boolean, with the pattern's extents (B_p, H_p) as leading axes."""
    check_mask_table(check, data.draw(sparse_cases(pattern), label="case"))


@pytest.mark.clause("sparse.mask")
@pytest.mark.parametrize(
    "case", [pytest.param(c, id=f"{c.pattern}-{i}") for cases in EDGES.values() for i, c in enumerate(cases)]
)
def test_mask_table_edges(check, dtype, case):
    check_mask_table(check, case)


@pytest.mark.clause("sparse.cost")
@pytest.mark.parametrize("pattern", BUDGETED)
def test_memory_is_linear(check, dtype, pattern):
    """Peak memory of a fixed budget of keys per query grows linearly: x4 in N stays under x8."""
    pattern_declared(SparseCase(pattern))

    def build(n):
        case = SparseCase(pattern, h_q=2, h_kv=2, n_q=n, n_k=n, d_qk=16, d_v=16)
        q, k, v, _ = case.inputs(dtype)
        params = budgeted_params(pattern, n, heads=2)
        return (q, k, v), dict(pattern=pattern, **params), (case, f"budgeted_params({pattern!r}, {n}, heads=2)")

    check_linear_memory(check, "sparse", build)
