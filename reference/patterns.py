"""Sparsity patterns as index functions (clauses in :mod:`attnspec.sparse`).

Each factory returns ``mask_mod(b, h, q_pos, kv_pos)``: True where the query at position
``q_pos`` may attend to the key at ``kv_pos``. Like the rules of :mod:`attnspec.reference.masks`
it is called once on broadcast index arrays (``b`` ``(B_p, 1, 1, 1)``, ``h`` ``(1, H_p, 1, 1)``,
``q_pos`` ``(1, 1, n, 1)``, ``kv_pos`` ``(1, 1, 1, m)``), so it can be evaluated on the whole
table or on any rows x keys sub-grid. Positions are in the key sequence; :func:`aligned` maps
query rows to positions (bottom-right). The factories take their parameters already validated
and normalised by :func:`attnspec.reference.sparse.build` (per-head and per-batch arrays with a
leading extent axis); they do not check them.
"""

from __future__ import annotations

import numpy as np

FACTORS = ("merged", "a1", "a2")


def dilated(window: int, dilation: np.ndarray, causal: bool):
    """Clause ``sparse.dilated``: ``(p - j) mod d == 0`` and ``|p - j| <= w d``; ``dilation`` ``(H_d,)``."""

    def dilated(b, h, q_pos, kv_pos):
        d = dilation[h]
        delta = q_pos - kv_pos
        ok = (delta % d == 0) & (np.abs(delta) <= window * d)
        return ok & (delta >= 0) if causal else ok

    return dilated


def longformer(window: int, global_tokens: np.ndarray):
    """Clause ``sparse.longformer``: ``|p - j| <= w`` or ``g[b, p]`` or ``g[b, j]``; ``g`` ``(B_g, N_k)``."""

    def longformer(b, h, q_pos, kv_pos):
        return (np.abs(q_pos - kv_pos) <= window) | global_tokens[b, q_pos] | global_tokens[b, kv_pos]

    return longformer


def bigbird(block: int, window_blocks: int, is_global: np.ndarray, random_blocks: np.ndarray):
    """Clause ``sparse.bigbird``; ``is_global`` ``(n_blocks,)`` flags, ``random_blocks`` ``(H_r, n_blocks, r)``."""

    def bigbird(b, h, q_pos, kv_pos):
        row, col = q_pos // block, kv_pos // block
        ok = (np.abs(row - col) <= window_blocks) | is_global[row] | is_global[col]
        picked = (random_blocks[h, row] == col[..., None]).any(axis=-1)  # (.., n, m, r) -> (.., n, m)
        return ok | picked

    return bigbird


def strided(stride: int, factor: str):
    """Clause ``sparse.strided``: ``A1 = [p - l, p]``, ``A2 = {j <= p : (p - j) mod l == 0}``."""

    def strided(b, h, q_pos, kv_pos):
        delta = q_pos - kv_pos
        a1, a2 = delta <= stride, delta % stride == 0
        return (delta >= 0) & _factor(factor, a1, a2)

    return strided


def fixed(stride: int, summary: int, factor: str):
    """Clause ``sparse.fixed``: ``A1`` the query's block, ``A2`` the last ``c`` positions of each block."""

    def fixed(b, h, q_pos, kv_pos):
        a1 = q_pos // stride == kv_pos // stride
        a2 = kv_pos % stride >= stride - summary
        return (kv_pos <= q_pos) & _factor(factor, a1, a2)

    return fixed


def _factor(factor: str, a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    return {"merged": a1 | a2, "a1": a1, "a2": a2}[factor]


def block_sparse(layout: np.ndarray, block_q: int, block_k: int):
    """Clause ``sparse.block_sparse``: ``layout[h, p // block_q, j // block_k]``; ``layout`` ``(H_l, R, C)``."""

    def block_sparse(b, h, q_pos, kv_pos):
        return layout[h, q_pos // block_q, kv_pos // block_k]

    return block_sparse


def prefix_lm(prefix_lens: np.ndarray):
    """Clause ``sparse.prefix_lm``: ``j < prefix_lens[b]`` or ``j <= p``."""

    def prefix_lm(b, h, q_pos, kv_pos):
        return (kv_pos < prefix_lens[b]) | (kv_pos <= q_pos)

    return prefix_lm


def document(document_ids: np.ndarray, causal: bool):
    """Clause ``sparse.document``: ``doc[b, p] == doc[b, j]``; ``document_ids`` ``(B_d, N_k)``."""

    def document(b, h, q_pos, kv_pos):
        same = document_ids[b, q_pos] == document_ids[b, kv_pos]
        return same & (kv_pos <= q_pos) if causal else same

    return document


def chunked(chunk: int, causal: bool):
    """Clause ``sparse.chunked``: ``p // c == j // c``."""

    def chunked(b, h, q_pos, kv_pos):
        same = q_pos // chunk == kv_pos // chunk
        return same & (kv_pos <= q_pos) if causal else same

    return chunked


def aligned(mask_mod, offset: int):
    """The pattern over query rows: row ``i`` is position ``i + offset``, ``offset = N_k - N_q``."""

    def aligned(b, h, q_idx, kv_idx):
        return mask_mod(b, h, q_idx + offset, kv_idx)

    return aligned


def bigbird_random_blocks(n_blocks: int, num_random: int, *, heads: int = 1, seed: int) -> np.ndarray:
    """A ``random_blocks`` array ``(heads, n_blocks, num_random)`` drawn from ``seed``.

    A convenience, not part of the clause (which takes the array): blocks are drawn uniformly
    with replacement by NumPy's ``default_rng(seed)``; duplicates are harmless.
    """
    return np.random.default_rng(seed).integers(0, max(n_blocks, 1), size=(heads, n_blocks, num_random))
