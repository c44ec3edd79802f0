"""Visibility rules and score modifiers as small index functions (clauses in :mod:`attnspec.sdpa`).

A ``mask_mod(b, h, q_idx, kv_idx)`` returns True where query ``q_idx`` may attend to key
``kv_idx``; a ``score_mod(score, b, h, q_idx, kv_idx)`` returns the modified score. Both are
called once with broadcast index arrays (``b`` of shape ``(B, 1, 1, 1)``, ``h`` ``(1, H, 1, 1)``,
``q_idx`` ``(1, 1, n_q, 1)``, ``kv_idx`` ``(1, 1, 1, n_k)``), so a rule is vectorised NumPy
and can be evaluated on any tile of the score matrix.
"""

from __future__ import annotations

import numpy as np


def causal_top_left():
    """Clause ``sdpa.causal.top_left``: ``j <= i``."""

    def causal_top_left(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return causal_top_left


def causal_bottom_right(offsets: np.ndarray):
    """Clause ``sdpa.causal.bottom_right``: ``j <= i + offset[b]``."""

    def causal_bottom_right(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offsets[b]

    return causal_bottom_right


def sliding_window(left: int, right: int, offsets: np.ndarray):
    """Clause ``sdpa.window``: ``i + offset[b] - left <= j <= i + offset[b] + right``; -1 unbounded.
    Offsets of 0 give ``sdpa.window.top_left``."""

    def sliding_window(b, h, q_idx, kv_idx):
        aligned = q_idx + offsets[b]
        ok = np.ones(np.broadcast_shapes(np.shape(aligned), np.shape(kv_idx)), dtype=bool)
        if left >= 0:
            ok &= kv_idx >= aligned - left
        if right >= 0:
            ok &= kv_idx <= aligned + right
        return ok

    return sliding_window


def padding(q_lens: np.ndarray, kv_lens: np.ndarray):
    """Clause ``sdpa.padding``: ``i < q_lens[b]`` and ``j < kv_lens[b]``."""

    def padding(b, h, q_idx, kv_idx):
        return (q_idx < q_lens[b]) & (kv_idx < kv_lens[b])

    return padding


def from_array(mask: np.ndarray):
    """Clause ``sdpa.mask``: a boolean array already broadcast to ``(B, H_q, N_q, N_k)``."""

    def boolean_mask(b, h, q_idx, kv_idx):
        return mask[b, h, q_idx, kv_idx]

    return boolean_mask


def and_masks(*mask_mods):
    """The intersection of visibility rules."""

    def and_masks(b, h, q_idx, kv_idx):
        ok = np.bool_(True)
        for mod in mask_mods:
            ok = ok & mod(b, h, q_idx, kv_idx)
        return ok

    return and_masks


def softcap(cap: float):
    """Clause ``sdpa.softcap``: ``cap * tanh(score / cap)``."""

    def softcap(score, b, h, q_idx, kv_idx):
        return cap * np.tanh(score / cap)

    return softcap


def additive_bias(bias: np.ndarray):
    """Clause ``sdpa.bias``: ``score + bias[b, h, i, j]`` (bias broadcast to the full shape)."""

    def additive_bias(score, b, h, q_idx, kv_idx):
        return score + bias[b, h, q_idx, kv_idx]

    return additive_bias


def alibi(slopes: np.ndarray, offsets: np.ndarray):
    """Clause ``sdpa.alibi``: ``score - slopes[b, h] * |i + offset[b] - j|``; slopes ``(B, H_q)``."""

    def alibi(score, b, h, q_idx, kv_idx):
        return score - slopes[b, h] * np.abs(q_idx + offsets[b] - kv_idx)

    return alibi


def evaluate(mod, shape_bh: tuple[int, int], rows: range, cols: range, *score):
    """Call a mask_mod (or, with ``score``, a score_mod) on the tile ``rows x cols``."""
    n_b, n_h = shape_bh
    b = np.arange(n_b)[:, None, None, None]
    h = np.arange(n_h)[None, :, None, None]
    q_idx = np.arange(rows.start, rows.stop)[None, None, :, None]
    kv_idx = np.arange(cols.start, cols.stop)[None, None, None, :]
    return mod(*score, b, h, q_idx, kv_idx)


def key_bounds(
    n_q: int,
    causal: str | None,
    window: tuple[int, int] | None,
    q_lens: np.ndarray,
    kv_lens: np.ndarray,
    window_align: str = "bottom_right",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row inclusive bounds ``lo <= j <= hi`` of the keys that causal, window and padding allow.

    Shapes ``(B, N_q)``; a row with ``lo > hi`` sees no key. Boolean masks are not included. The
    tiled reference uses this to skip tiles that hold no visible pair, as real kernels do.
    """
    i = np.arange(n_q)[None, :]
    aligned = i + (kv_lens - q_lens)[:, None]
    lo = np.zeros_like(aligned)
    hi = np.broadcast_to(kv_lens[:, None] - 1, aligned.shape).copy()
    if causal == "top_left":
        hi = np.minimum(hi, i)
    elif causal == "bottom_right":
        hi = np.minimum(hi, aligned)
    if window is not None:
        left, right = window
        at = aligned if window_align == "bottom_right" else np.broadcast_to(i, aligned.shape)
        if left >= 0:
            lo = np.maximum(lo, at - left)
        if right >= 0:
            hi = np.minimum(hi, at + right)
    hi = np.where(i < q_lens[:, None], hi, -1)
    return lo, hi
