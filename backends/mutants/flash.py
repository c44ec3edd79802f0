"""Mutants of the flash algorithm and of multi-head attention."""

from __future__ import annotations

import math

import numpy as np

from attnspec import reference as ref
from attnspec.backends.mutants.base import Mutant


class TiledDropsPartialTileMutant(Mutant):
    """The tiled pass skips the last key tile when ``block_k`` does not divide ``N_k``."""

    breaks = "flash.tiled"

    def flash_forward(self, q, k, v, *, block_k, kv_lens=None, **options):
        covered = (k.shape[2] // block_k) * block_k
        lens = np.full(k.shape[0], k.shape[2]) if kv_lens is None else kv_lens
        return super().flash_forward(q, k, v, block_k=block_k, kv_lens=np.minimum(lens, covered), **options)


class QuadraticMemoryMutant(Mutant):
    """The "tiled" pass materialises the whole ``N_q x N_k`` score matrix."""

    breaks = "flash.memory"

    def flash_forward(self, q, k, v, *, block_q, block_k, **options):
        out, lse = ref.sdpa(q, k, v, return_lse=True, **options)
        return out.astype(q.dtype), lse.astype(q.dtype)


class MergeIgnoresLseMutant(Mutant):
    """Partial results are averaged with equal weights instead of weighted by their LSE."""

    breaks = "flash.merge"

    def merge_partials(self, outs, lses):
        has_key = np.isfinite(lses)
        count = np.maximum(has_key.sum(axis=0), 1)
        out = np.where(has_key[..., None], outs, 0.0).sum(axis=0) / count[..., None]
        _, lse = ref.merge_partials(outs, lses)
        return out.astype(outs.dtype), lse.astype(lses.dtype)


class SplitKvDropsLastSplitMutant(Mutant):
    """Split-KV forgets the last split when ``num_splits`` does not divide ``N_k``."""

    breaks = "flash.split_kv"

    def split_kv(self, q, k, v, *, num_splits, kv_lens=None, **options):
        chunk = max(1, math.ceil(k.shape[2] / num_splits))
        covered = k.shape[2] if k.shape[2] % chunk == 0 else (k.shape[2] // chunk) * chunk
        lens = np.full(k.shape[0], k.shape[2]) if kv_lens is None else kv_lens
        return super().split_kv(q, k, v, num_splits=num_splits, kv_lens=np.minimum(lens, covered), **options)


class DecodeExcludesNewestMutant(Mutant):
    """Decoding reads one position short of ``cache_lens``: a new token does not see itself."""

    breaks = "flash.decode"

    def decode(self, q, k_cache, v_cache, *, cache_lens, **options):
        return super().decode(q, k_cache, v_cache, cache_lens=np.maximum(cache_lens - 1, 0), **options)


class MhaHeadsInterleavedMutant(Mutant):
    """Projected features split into heads channel-major (``(D, H)``) instead of head-major."""

    breaks = "mha"

    def mha(self, x_q, x_kv, *, w_q, w_k, w_v, w_o, num_heads, num_kv_heads=None, **options):
        kv_heads = num_kv_heads or num_heads

        def split(x, heads):
            b, n, width = x.shape
            return x.reshape(b, n, width // heads, heads).transpose(0, 3, 1, 2)

        x_q, x_kv = x_q.astype(np.float64), x_kv.astype(np.float64)
        o = ref.sdpa(split(x_q @ w_q, num_heads), split(x_kv @ w_k, kv_heads), split(x_kv @ w_v, kv_heads), **options)
        b, h, n, d = o.shape
        return (o.transpose(0, 2, 1, 3).reshape(b, n, h * d) @ w_o).astype(w_o.dtype)
