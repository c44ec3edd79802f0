"""Decoding against a paged KV cache in float64 (clauses ``flash.paged*`` in :mod:`attnspec.flash`).

The pages a sequence uses are gathered into the contiguous cache of ``flash.decode``, and
:func:`attnspec.reference.flash.decode` computes the result. Only the slots in use are copied;
every other position of the gathered cache holds NaN, so a read past a length shows in the output.
"""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.flash import check_decode_options, decode


@reference("paged_decode")
def paged_decode(q, k_pages, v_pages, *, block_table, cache_lens, layout: str = "NHD", num_splits: int = 1, **options):
    """Clauses ``flash.paged``, ``flash.paged.head_major``, ``flash.paged.unused``: ``decode`` on the
    gathered cache. Table entries that are not in use are never dereferenced."""
    check_decode_options(options)
    q, k_pages, v_pages = (
        check.float_array(n, x, ndim=4) for n, x in (("q", q), ("k_pages", k_pages), ("v_pages", v_pages))
    )
    layout, table, lens = check.paged_cache(q, k_pages, v_pages, block_table, cache_lens, layout)
    k_cache, v_cache = gather_pages(k_pages, v_pages, table, lens, layout)
    return decode(q, k_cache, v_cache, cache_lens=lens, num_splits=num_splits, **options)


def gather_pages(k_pages: np.ndarray, v_pages: np.ndarray, table: np.ndarray, lens: np.ndarray, layout: str):
    """The contiguous caches ``(B, H_kv, max_pages * page_size, D)`` that the block table describes.

    Token ``t < lens[b]`` is slot ``t % page_size`` of page ``table[b, t // page_size]``; every
    other position is NaN. Arguments are checked (:func:`attnspec.validation.paged_cache`).
    """
    if layout == "HND":  # (num_pages, H_kv, page_size, D) -> (num_pages, page_size, H_kv, D)
        k_pages, v_pages = k_pages.swapaxes(1, 2), v_pages.swapaxes(1, 2)
    page_size, h_kv = k_pages.shape[1], k_pages.shape[2]
    batch, n_max = table.shape[0], table.shape[1] * page_size
    check.fits_in_memory(
        "paged_decode",
        ("gathered k (B, H_kv, max_pages * page_size, D_qk)", (batch, h_kv, n_max, k_pages.shape[3]), 8),
        ("gathered v (B, H_kv, max_pages * page_size, D_v)", (batch, h_kv, n_max, v_pages.shape[3]), 8),
    )
    k = np.full((batch, h_kv, n_max, k_pages.shape[3]), np.nan)
    v = np.full((batch, h_kv, n_max, v_pages.shape[3]), np.nan)
    for b, n in enumerate(lens):
        t = np.arange(n)
        pages, slots = table[b, t // page_size], t % page_size  # only the entries in use are read
        k[b, :, :n] = k_pages[pages, slots].swapaxes(0, 1)  # (n, H_kv, D) -> (H_kv, n, D)
        v[b, :, :n] = v_pages[pages, slots].swapaxes(0, 1)
    return k, v
