"""Mutants of :mod:`attnspec.sparse`.

Most get one pattern's definition wrong the way a kernel's mask or index arithmetic does; they
compute densely from their (wrong) table through :class:`_WrongPattern`, and ``sparse_mask``
returns the same wrong table, as a backend whose pattern code is shared by both would.
"""

from __future__ import annotations

import numpy as np

from attnspec import reference as ref
from attnspec.backends.mutants.base import Mutant
from attnspec.reference import patterns
from attnspec.reference import sparse as sparse_ref


def _dense(q, k, v, mask, scale, return_lse):
    out, lse = ref.sdpa(q, k, v, mask=mask, scale=scale, return_lse=True)
    return (out.astype(q.dtype), lse.astype(q.dtype)) if return_lse else out.astype(q.dtype)


class _WrongPattern(Mutant):
    """Computes ``target`` from the mask_mod :meth:`wrong` builds from the normalised parameters."""

    target = ""

    def wrong(self, **params):
        raise NotImplementedError

    def _table(self, pattern, n_q, n_k, **params):
        pat = sparse_ref.build(pattern, n_q, n_k, **params)
        mask_mod = self.wrong(**pat.params) if pattern == self.target else pat.mask_mod
        return sparse_ref.table(mask_mod, pat.batch, pat.heads, n_q, n_k)

    def sparse_mask(self, pattern, n_q, n_k, **params):
        return self._table(pattern, n_q, n_k, **params)

    def sparse(self, q, k, v, *, pattern, scale=None, return_lse=False, **params):
        return _dense(q, k, v, self._table(pattern, q.shape[2], k.shape[2], **params), scale, return_lse)


class SparseTopLeftMutant(Mutant):
    """``sparse`` evaluates the pattern at the query's row index, not its position: with
    ``N_q < N_k`` (chunked prefill, decoding) the rows get the first rows' keys (top-left)."""

    breaks = "sparse"

    def sparse(self, q, k, v, *, pattern, scale=None, return_lse=False, **params):
        n_q, n_k = q.shape[2], k.shape[2]
        full = sparse_ref.sparse_mask(pattern, n_k, n_k, **params)
        return _dense(q, k, v, full[:, :, :n_q], scale, return_lse)


class SparseFiniteMaskMutant(Mutant):
    """``sparse`` masks by adding ``-10000`` to invisible scores (BERT's ``(1 - mask) * -10000.0``), rows
    without keys set to zero: with ordinary inputs ``exp(-1e4)`` underflows and the output is right,
    but an invisible key whose score exceeds the visible ones by ``1e4`` leaks into the row."""

    breaks = "sparse"

    def sparse(self, q, k, v, *, pattern, scale=None, return_lse=False, **params):
        table = sparse_ref.sparse_mask(pattern, q.shape[2], k.shape[2], **params)
        out, lse = ref.sdpa(q, k, v, bias=np.where(table, 0.0, -1e4), scale=scale, return_lse=True)
        empty = ~np.broadcast_to(table, out.shape[:3] + table.shape[-1:]).any(axis=-1)
        out, lse = np.where(empty[..., None], 0.0, out), np.where(empty, -np.inf, lse)
        return (out.astype(q.dtype), lse.astype(q.dtype)) if return_lse else out.astype(q.dtype)


class SparseMaskFirstHeadMutant(Mutant):
    """``sparse_mask`` evaluates the pattern for batch item 0 and head 0 only and broadcasts it,
    as a FlexAttention BlockMask built with ``B=None, H=None`` does: per-batch and per-head
    patterns (global tokens, prefixes, documents, dilations, layouts) come out wrong."""

    breaks = "sparse.mask"

    def sparse_mask(self, pattern, n_q, n_k, **params):
        mask = sparse_ref.sparse_mask(pattern, n_q, n_k, **params)
        return np.broadcast_to(mask[:1, :1], mask.shape).copy()


class DilationOffByOneMutant(_WrongPattern):
    """ "Gaps of size d" read as d skipped positions: attended keys are ``d + 1`` apart."""

    breaks, target = "sparse.dilated", "dilated"

    def wrong(self, window, dilation, causal):
        return patterns.dilated(window, dilation + 1, causal)


class LongformerGlobalOneWayMutant(_WrongPattern):
    """Global tokens attend to every key, but other queries see them only inside their window."""

    breaks, target = "sparse.longformer", "longformer"

    def wrong(self, window, global_tokens):
        def one_way(b, h, q_pos, kv_pos):
            return (np.abs(q_pos - kv_pos) <= window) | global_tokens[b, q_pos]

        return one_way


class BigbirdRandomTransposedMutant(_WrongPattern):
    """Random blocks indexed in the wrong order: key block ``C`` is read by query block ``R`` when
    ``R`` is in ``random_blocks[h, C]`` (the transposed, key-major edge list)."""

    breaks, target = "sparse.bigbird", "bigbird"

    def wrong(self, block, window_blocks, is_global, random_blocks):
        base = patterns.bigbird(block, window_blocks, is_global, random_blocks[:, :, :0])

        def transposed(b, h, q_pos, kv_pos):
            picked = (random_blocks[h, kv_pos // block] == (q_pos // block)[..., None]).any(axis=-1)
            return base(b, h, q_pos, kv_pos) | picked

        return transposed


class StridedShortWindowMutant(_WrongPattern):
    """The local head ``A1`` holds the previous ``l - 1`` keys and itself (``p - l < j``), not the
    paper's ``max(0, p - l) <= j``; hidden in the merged head, where ``A2`` holds ``p - l``."""

    breaks, target = "sparse.strided", "strided"

    def wrong(self, stride, factor):
        def strided(b, h, q_pos, kv_pos):
            delta = q_pos - kv_pos
            a1, a2 = delta < stride, delta % stride == 0
            return (delta >= 0) & {"merged": a1 | a2, "a1": a1, "a2": a2}[factor]

        return strided


class FixedSummaryFirstMutant(_WrongPattern):
    """The summary cells are the first ``c`` positions of each block instead of the last ``c``."""

    breaks, target = "sparse.fixed", "fixed"

    def wrong(self, stride, summary, factor):
        def fixed(b, h, q_pos, kv_pos):
            a1, a2 = q_pos // stride == kv_pos // stride, kv_pos % stride < summary
            return (kv_pos <= q_pos) & {"merged": a1 | a2, "a1": a1, "a2": a2}[factor]

        return fixed


class BlockLayoutColumnMajorMutant(_WrongPattern):
    """The block layout is read column-major (key-block-major storage taken for row-major): a
    square layout acts transposed."""

    breaks, target = "sparse.block_sparse", "block_sparse"

    def wrong(self, layout, block_q, block_k):
        heads, rows, cols = layout.shape
        return patterns.block_sparse(layout.reshape(heads, cols, rows).swapaxes(1, 2), block_q, block_k)


class PrefixInclusiveMutant(_WrongPattern):
    """The prefix is taken as inclusive: ``j <= prefix_lens[b]``, one bidirectional key too many."""

    breaks, target = "sparse.prefix_lm", "prefix_lm"

    def wrong(self, prefix_lens):
        return patterns.prefix_lm(prefix_lens + 1)


class DocumentStartSeesPreviousMutant(_WrongPattern):
    """A query's document is looked up one position early (``searchsorted(cu_seqlens, p, side="left")``
    instead of ``"right"``): the first token of a document attends inside the previous one."""

    breaks, target = "sparse.document", "document"

    def wrong(self, document_ids, causal):
        def document(b, h, q_pos, kv_pos):
            same = document_ids[b, np.maximum(q_pos - 1, 0)] == document_ids[b, kv_pos]
            return same & (kv_pos <= q_pos) if causal else same

        return document


class ChunkShiftedMutant(_WrongPattern):
    """Chunk boundaries shifted by one position: chunks are ``(x + 1) // c``."""

    breaks, target = "sparse.chunked", "chunked"

    def wrong(self, chunk, causal):
        shifted = patterns.chunked(chunk, causal)
        return lambda b, h, q_pos, kv_pos: shifted(b, h, q_pos + 1, kv_pos + 1)


class SparseDenseMutant(Mutant):
    """``sparse`` builds the ``N_q x N_k`` mask table and runs dense attention: right values,
    quadratic memory."""

    breaks = "sparse.cost"

    def sparse(self, q, k, v, *, pattern, scale=None, return_lse=False, **params):
        return _dense(q, k, v, sparse_ref.sparse_mask(pattern, q.shape[2], k.shape[2], **params), scale, return_lse)
