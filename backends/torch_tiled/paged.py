"""A paged KV cache gathered on the device for the decode path (clauses ``flash.paged*``).

The pages a batch uses are gathered by one indexing of the pool per tensor into the contiguous
``(B, H_kv, N, D)`` cache that :func:`.kernel.split_kv` decodes against; the lengths then keep
every slot past them out of the result, as in ``flash.decode``. Table entries that are not in
use are never dereferenced: page 0 stands in for them (its slots lie past the length). Without a
mask or a bias (sized to the table's capacity) the cache is cut after the longest sequence's
pages, so a wide table costs nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from attnspec import validation as _checks
from attnspec.backends import _torch_arrays as arrays


def gather(q, k_pages, v_pages, block_table, cache_lens, layout, *, full_capacity: bool):
    """``(k_cache, v_cache, cache_lens)``: the contiguous caches on the pool's device and the host lengths.

    Arguments are checked as the reference checks them (:func:`attnspec.validation.paged_cache`);
    ``block_table`` and ``cache_lens`` are read on the host (a tensor on the GPU costs one
    synchronisation). ``full_capacity`` keeps ``max_pages * page_size`` positions.
    """
    for name, x in (("q", q), ("k_pages", k_pages), ("v_pages", v_pages)):
        arrays.tensor(name, x)
    _checks.same_dtype(q=q, k_pages=k_pages, v_pages=v_pages)
    layout, table, lens = _checks.paged_cache(
        q, k_pages, v_pages, arrays.host(block_table), arrays.host(cache_lens), layout
    )
    size = k_pages.shape[1] if layout == "NHD" else k_pages.shape[2]
    pages_in_use = -(-lens // size)
    n_pages = table.shape[1] if full_capacity else int(pages_in_use.max(initial=0))
    if k_pages.shape[0] == 0:  # an empty pool: every length is 0 (checked), nothing to gather
        return (
            _empty(k_pages, q.shape[0], n_pages * size, layout),
            _empty(v_pages, q.shape[0], n_pages * size, layout),
            lens,
        )
    index = np.where(np.arange(n_pages) < pages_in_use[:, None], table[:, :n_pages], 0)
    index_t = torch.as_tensor(index, device=k_pages.device)
    return _contiguous(k_pages[index_t], layout), _contiguous(v_pages[index_t], layout), lens


def _contiguous(pages: torch.Tensor, layout: str) -> torch.Tensor:
    """Gathered pages ``(B, n, page_size, H_kv, D)`` (NHD) or ``(B, n, H_kv, page_size, D)`` (HND) as
    ``(B, H_kv, n * page_size, D)``."""
    if layout == "NHD":
        b, n, size, h_kv, d = pages.shape
        pages = pages.permute(0, 3, 1, 2, 4)
    else:
        b, n, h_kv, size, d = pages.shape
        pages = pages.permute(0, 2, 1, 3, 4)
    return pages.reshape(b, h_kv, n * size, d)


def _empty(pages: torch.Tensor, batch: int, n: int, layout: str) -> torch.Tensor:
    h_kv = pages.shape[2] if layout == "NHD" else pages.shape[1]
    return torch.zeros((batch, h_kv, n, pages.shape[3]), dtype=pages.dtype, device=pages.device)
