"""Mutants of decoding against a paged KV cache (clauses ``flash.paged*``): the bugs of page tables.

Each rewrites the call the way a kernel with the bug would read the pool, then runs the reference.
"""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.backends.mutants.base import Mutant


def _page_size(k_pages, layout: str) -> int:
    return k_pages.shape[1] if layout == "NHD" else k_pages.shape[2]


def _in_use(block_table, cache_lens, page_size: int) -> np.ndarray:
    """Boolean ``(B, max_pages)``: the entries in use (``i < ceil(cache_lens[b] / page_size)``)."""
    table, lens = np.asarray(block_table), np.asarray(cache_lens)
    return np.arange(table.shape[1]) < -(-lens[:, None] // page_size)


class PagedPageOffByOneMutant(Mutant):
    """Every page in use is read from the pool index after the one the table names (wrapping)."""

    breaks = "flash.paged"

    def paged_decode(self, q, k_pages, v_pages, *, block_table, cache_lens, layout="NHD", **options):
        in_use = _in_use(block_table, cache_lens, _page_size(k_pages, layout))
        shifted = np.where(in_use, (np.asarray(block_table) + 1) % max(k_pages.shape[0], 1), block_table)
        return super().paged_decode(
            q, k_pages, v_pages, block_table=shifted, cache_lens=cache_lens, layout=layout, **options
        )


class PagedContiguousPagesMutant(Mutant):
    """A sequence's pages are assumed consecutive in the pool: page ``i`` read at ``block_table[b, 0] + i``."""

    breaks = "flash.paged"

    def paged_decode(self, q, k_pages, v_pages, *, block_table, cache_lens, layout="NHD", **options):
        table = np.asarray(block_table)
        in_use = _in_use(table, cache_lens, _page_size(k_pages, layout))
        assumed = (table[:, :1] + np.arange(table.shape[1])) % max(k_pages.shape[0], 1)
        return super().paged_decode(
            q,
            k_pages,
            v_pages,
            block_table=np.where(in_use, assumed, table),
            cache_lens=cache_lens,
            layout=layout,
            **options,
        )


class PagedLastPartialPageIgnoredMutant(Mutant):
    """Only whole pages are read: the tokens on a last, partial page are left out."""

    breaks = "flash.paged"

    def paged_decode(self, q, k_pages, v_pages, *, block_table, cache_lens, layout="NHD", **options):
        page_size = _page_size(k_pages, layout)
        whole = np.asarray(cache_lens) // page_size * page_size
        return super().paged_decode(
            q, k_pages, v_pages, block_table=block_table, cache_lens=whole, layout=layout, **options
        )


class PagedLastPageOverReadMutant(Mutant):
    """The last page in use is read whole: its slots past the sequence's length count as keys."""

    breaks = "flash.paged.unused"

    def paged_decode(self, q, k_pages, v_pages, *, block_table, cache_lens, layout="NHD", **options):
        page_size = _page_size(k_pages, layout)
        rounded_up = -(-np.asarray(cache_lens) // page_size) * page_size
        return super().paged_decode(
            q, k_pages, v_pages, block_table=block_table, cache_lens=rounded_up, layout=layout, **options
        )


class PagedUnusedEntriesReadMutant(Mutant):
    """Every table entry is loaded (out-of-range ones clamped into the pool) and the keys past a
    length are weighted by 0 instead of skipped: NaN in a page an unused entry names reaches the
    output (``0 * NaN``)."""

    breaks = "flash.paged.unused"

    def paged_decode(self, q, k_pages, v_pages, *, block_table, cache_lens, layout="NHD", **options):
        out, lse = super().paged_decode(
            q, k_pages, v_pages, block_table=block_table, cache_lens=cache_lens, layout=layout, **options
        )
        table = np.clip(np.asarray(block_table), 0, max(k_pages.shape[0] - 1, 0))
        unused = ~_in_use(table, cache_lens, _page_size(k_pages, layout))
        if k_pages.shape[0] == 0:
            return out, lse
        leaked = out.astype(np.float64)
        for b in range(table.shape[0]):  # 0 * (values of the pages the unused entries name)
            leaked[b] += 0.0 * np.asarray(v_pages, np.float64)[table[b][unused[b]]].sum()
        return leaked.astype(out.dtype), lse


class PagedLayoutsSwappedMutant(Mutant):
    """Head-major pages are read with token-major strides and token-major ones with head-major
    strides: the pool's memory is reinterpreted, not transposed."""

    breaks = "flash.paged.head_major"

    def paged_decode(self, q, k_pages, v_pages, *, block_table, cache_lens, layout="NHD", **options):
        layout = check.choice("layout", layout, check.PAGE_LAYOUTS)
        k_pages, v_pages = np.ascontiguousarray(k_pages), np.ascontiguousarray(v_pages)
        n, a, c = k_pages.shape[:3]  # read (n, a, c, D) memory as (n, c, a, D), in the other layout
        return super().paged_decode(
            q,
            k_pages.reshape(n, c, a, -1),
            v_pages.reshape(n, c, a, -1),
            block_table=block_table,
            cache_lens=cache_lens,
            layout="HND" if layout == "NHD" else "NHD",
            **options,
        )
