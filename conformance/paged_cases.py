"""Cases for decoding against a paged KV cache (clauses ``flash.paged*``): an ``sdpa`` case's keys
and values laid out in a pool of pages, as a serving framework's allocator leaves them.

Page sizes 1, 3, 16 and 64, so that a length leaves a last partial page; the pool permuted, so a
sequence's pages lie anywhere and in any order; pages shared between two sequences (a common
prefix, partial last page included) and repeated within one table; spare pages of garbage (NaN,
or a large finite value) that no sequence uses; table entries past a sequence's pages pointing at
garbage, at another sequence's page, at ``-1`` or past the pool. The expected result never goes
through a page table: it is ``decode`` on the contiguous cache the case started from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from hypothesis import strategies as st

from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.strategies import sdpa_cases, seqlens

PAGE_SIZES = (1, 3, 16, 64)
#: What the slots and pages that no sequence may read hold: NaN, or a finite value far larger than
#: the inputs' (a read that is masked to weight 0 leaves it out; a read that is not shows).
GARBAGE = {"nan": np.nan, "large": 1e4}


@dataclass(frozen=True)
class PagedCase:
    """One ``paged_decode`` call: ``sdpa`` (its ``q``; ``k``, ``v`` the cache) in pages of ``page_size``."""

    sdpa: SdpaCase
    page_size: int = 16
    cache_lens: tuple[int, ...] = (1,)
    layout: str = "NHD"
    shared: int = 0  # sequence 1's first `shared` tokens are sequence 0's, on the same pages
    repeated: bool = False  # sequence 0's page 1 repeats its page 0 (one pool index twice in a table)
    spare_entries: int = 1  # table entries past the pages the longest possible sequence needs
    garbage_pages: int = 1  # pages of garbage in the pool that no sequence uses
    garbage: str = "nan"
    table_dtype: str = "int32"
    num_splits: int = 1

    def with_(self, **changes) -> PagedCase:
        return replace(self, **changes)

    def inputs(self, dtype: str):
        """``(q, k_pages, v_pages, block_table, cache_lens, options, k_cache, v_cache)``: the call's
        arguments and the contiguous caches ``(B, H_kv, max_pages * page_size, D)`` they describe,
        NaN past each length (the expected result is ``decode`` on those)."""
        q, k, v, options = self.sdpa.inputs(dtype)
        k, v = k.copy(), v.copy()
        size, lens = self.page_size, np.asarray(self.cache_lens, np.int64)
        batch, h_kv = k.shape[0], k.shape[1]
        if self.repeated and lens[0] >= 2 * size:
            k[0, :, size : 2 * size], v[0, :, size : 2 * size] = k[0, :, :size], v[0, :, :size]
        if self.shared:
            k[1, :, : self.shared], v[1, :, : self.shared] = k[0, :, : self.shared], v[0, :, : self.shared]
        # Logical page (b, i) -> page id; a shared or repeated page takes the id of the page it repeats.
        ids: dict[tuple[int, int], int] = {}
        for b in range(batch):
            for i in range(-(-int(lens[b]) // size)):
                if b == 1 and min((i + 1) * size, lens[1]) <= self.shared:
                    ids[b, i] = ids[0, i]
                elif b == 0 and i == 1 and self.repeated and lens[0] >= 2 * size:
                    ids[b, i] = ids[0, 0]
                else:
                    ids[b, i] = len(set(ids.values()))
        real = len(set(ids.values()))
        num_pages = real + self.garbage_pages
        rng = np.random.default_rng(self.sdpa.seed ^ 0x9A6ED)
        where = rng.permutation(num_pages)  # page id -> pool index: real pages first, then garbage
        fill = rounded(np.array(GARBAGE[self.garbage]), dtype)
        k_pages = np.full((num_pages, size, h_kv, k.shape[3]), fill, dtype=k.dtype)
        v_pages = np.full((num_pages, size, h_kv, v.shape[3]), fill, dtype=v.dtype)
        max_pages = math.ceil(self.sdpa.n_k / size) + self.spare_entries
        table = np.zeros((batch, max_pages), np.int64)
        for (b, i), page in ids.items():
            table[b, i] = where[page]
            stop = min((i + 1) * size, int(lens[b]))
            k_pages[where[page], : stop - i * size] = k[b, :, i * size : stop].swapaxes(0, 1)
            v_pages[where[page], : stop - i * size] = v[b, :, i * size : stop].swapaxes(0, 1)
        top = np.iinfo(self.table_dtype).max
        for b in range(batch):
            unused = range(-(-int(lens[b]) // size), max_pages)
            for n, i in enumerate(unused):  # the first one names garbage; the others anything
                anything = (where[real], -1, num_pages, num_pages + 1000, top, int(rng.integers(num_pages)))
                table[b, i] = anything[0] if n == 0 else anything[int(rng.integers(len(anything)))]
        k_cache = np.full((batch, h_kv, max_pages * size, k.shape[3]), np.nan, dtype=k.dtype)
        v_cache = np.full((batch, h_kv, max_pages * size, v.shape[3]), np.nan, dtype=v.dtype)
        for b, n in enumerate(lens):
            k_cache[b, :, :n], v_cache[b, :, :n] = k[b, :, :n], v[b, :, :n]
        if self.layout == "HND":
            k_pages, v_pages = (
                np.ascontiguousarray(k_pages.swapaxes(1, 2)),
                np.ascontiguousarray(v_pages.swapaxes(1, 2)),
            )
        table = table.astype(self.table_dtype)
        return q, k_pages, v_pages, table, lens.astype(np.int32), options, k_cache, v_cache


@st.composite
def paged_cases(draw, *, layout: str = "NHD", garbage: tuple[str, ...] = tuple(GARBAGE)) -> PagedCase:
    """A decode case (every declared sdpa option but the mask and the bias, which are sized to the
    table's capacity) with its cache in pages."""
    case = draw(sdpa_cases(extras=True, magnitudes=("unit",)))
    case = case.with_(causal=None, q_lens=None, kv_lens=None, mask=None, bias=None)
    lens = draw(seqlens(case.batch, case.n_k), label="cache_lens")
    shared = draw(st.integers(0, min(lens[:2])), label="shared") if case.batch >= 2 else 0
    return PagedCase(
        case,
        page_size=draw(st.sampled_from(PAGE_SIZES), label="page_size"),
        cache_lens=lens,
        layout=layout,
        shared=shared,
        repeated=draw(st.booleans(), label="repeated"),
        spare_entries=draw(st.integers(0, 2), label="spare_entries"),
        garbage_pages=draw(st.integers(1, 2), label="garbage_pages"),
        garbage=draw(st.sampled_from(garbage), label="garbage"),
        table_dtype=draw(st.sampled_from(["int32", "int64"]), label="table_dtype"),
        num_splits=draw(st.sampled_from([1, 3]), label="num_splits"),
    )
