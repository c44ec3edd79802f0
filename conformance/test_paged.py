"""Conformance of decoding against a paged KV cache (clauses ``flash.paged*`` of :mod:`attnspec.flash`)."""

import numpy as np
import pytest
from hypothesis import example, given

from attnspec import reference
from attnspec.conformance.calls import call, call_unguarded
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.paged_cases import PagedCase, paged_cases
from attnspec.conformance.tolerance import sdpa_bounds

#: Pinned cases: page sizes 1, 16 and 64 with a last partial page, GQA, two sequences sharing a
#: prefix (a partial page of it included), a sequence of length 0, table entries past the pages.
EXAMPLES = (
    PagedCase(SdpaCase(batch=2, h_q=4, h_kv=2, n_q=3, n_k=129, seed=1), 64, (129, 70), shared=70, repeated=True),
    PagedCase(
        SdpaCase(batch=2, h_q=6, h_kv=3, n_q=1, n_k=65, d_qk=16, seed=2), 16, (65, 37), shared=20, spare_entries=2
    ),
    PagedCase(SdpaCase(batch=2, h_q=2, h_kv=2, n_q=2, n_k=7, seed=3), 1, (7, 4), shared=3, garbage_pages=2),
    PagedCase(SdpaCase(batch=2, h_q=3, h_kv=3, n_q=1, n_k=17, seed=4), 3, (17, 0), num_splits=3, table_dtype="int64"),
)


def check_paged(check, case: PagedCase, dtype: str) -> None:
    """``paged_decode`` against ``decode`` on the contiguous cache the pages were made from."""
    __tracebackhide__ = True
    q, k_pages, v_pages, table, lens, options, k_cache, v_cache = case.inputs(dtype)
    out, lse = call(
        "paged_decode",
        q,
        k_pages,
        v_pages,
        block_table=table,
        cache_lens=lens,
        layout=None if case.layout == "NHD" else case.layout,  # the default, left out
        num_splits=case.num_splits,
        **options,
    )
    as_sdpa = {**options, "causal": "bottom_right", "kv_lens": lens}
    ref_out, ref_lse = reference.sdpa(q, k_cache, v_cache, return_lse=True, **as_sdpa)
    bound_out, bound_lse = sdpa_bounds(
        q, np.nan_to_num(k_cache), np.nan_to_num(v_cache), as_sdpa, dtype, ref_out, ref_lse
    )
    check.close(out, ref_out, bound_out, what="paged decode out", case=case)
    check.close(lse, ref_lse, bound_lse, what="paged decode lse", case=case)


@pytest.mark.clause("flash.paged")
@given(case=paged_cases())
@example(case=EXAMPLES[0])
@example(case=EXAMPLES[1])
@example(case=EXAMPLES[2])
@example(case=EXAMPLES[3])
def test_paged_equals_decode(check, dtype, case):
    """Token-major pages (NHD), permuted and shared, page sizes 1 to 64: decode's result."""
    check_paged(check, case, dtype)


@pytest.mark.clause("flash.paged.head_major")
@given(case=paged_cases(layout="HND"))
@example(case=EXAMPLES[0].with_(layout="HND"))
@example(case=EXAMPLES[1].with_(layout="HND"))
def test_paged_head_major(check, dtype, case):
    """Head-major pages (HND) hold the same cache: the same result."""
    check_paged(check, case, dtype)


@pytest.mark.clause("flash.paged.unused")
@given(case=paged_cases(garbage=("nan",)))
@example(case=EXAMPLES[0].with_(spare_entries=2))
@example(case=EXAMPLES[3].with_(cache_lens=(16, 2)))
def test_paged_unused_never_read(check, dtype, case):
    """NaN in every slot and page no sequence may read, and in-use-looking entries past the pages
    (-1, past the pool, at garbage, at another sequence's page): the output stays decode's."""
    check_paged(check, case, dtype)


@pytest.mark.clause("flash.paged")
@pytest.mark.parametrize(
    "mistake", ["entry -1 in use", "entry past the pool in use", "cache_lens past the table", "unknown layout"]
)
def test_paged_rejects(check, dtype, mistake):
    """An in-use entry that is no page, a length past the table's capacity, an unknown layout: errors."""
    case = EXAMPLES[1]
    q, k_pages, v_pages, table, lens, options, _, _ = case.inputs(dtype)
    kwargs = dict(block_table=table.copy(), cache_lens=lens.copy(), **options)
    if mistake == "entry -1 in use":
        kwargs["block_table"][1, 2] = -1  # cache_lens[1] = 37 uses pages 0 to 2 of 16 tokens
    elif mistake == "entry past the pool in use":
        kwargs["block_table"][0, 0] = k_pages.shape[0]
    elif mistake == "cache_lens past the table":
        kwargs["cache_lens"][0] = table.shape[1] * case.page_size + 1
    else:
        kwargs["layout"] = "NDH"
    check.rejects(lambda: call_unguarded("paged_decode", q, k_pages, v_pages, **kwargs), what=mistake, case=case)
