"""The visibility rules and score modifiers of ``sdpa``, written once for the PyTorch backends.

Each is an index function, as the spec states it (:mod:`attnspec.masks`), FlexAttention takes it
(``mask_mod``, ``score_mod``) and flash-attn writes its masking once: :meth:`Rules.visible`
``(b, h, i, j)`` is True where query ``i`` of batch item ``b``, head ``h`` may see key ``j``
(``sdpa.padding``, ``sdpa.causal.top_left`` / ``bottom_right``, ``sdpa.window``, ``sdpa.mask``);
:meth:`Rules.modify` ``(score, b, h, i, j)`` applies ``sdpa.softcap``, ``sdpa.bias`` and
``sdpa.alibi``. The tiled kernel (``torch``) evaluates them on a :func:`tile`, the ``torch-sdpa``
adapter on the :func:`full_grid` (its dense ``attn_mask``), and ``flex`` traces them.

The causal and window rules are bands along the diagonal: bounds on ``j - i``
(:meth:`Rules.diagonals`). Tile planning reads the same bounds, on host copies of the lengths:
which query rows may see a key tile (:func:`row_range`; none: the tile is skipped), which tiles
need no mask (:func:`fully_visible`), where the causal diagonal ends (:func:`causal_diagonal_end`).

The reference (:mod:`attnspec.reference.masks`) is written apart on purpose: an oracle that shared
its mask code with a kernel would let one bug hide in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch


def gather(x, b, h, i, j):
    """``x[b, h, i, j]`` for a ``(B, H_q, N_q, N_k)`` tensor: how a traced index function reads it."""
    return x[b, h, i, j]


class Tile(NamedTuple):
    """Where index functions are evaluated: broadcast index tensors, and how tensors are read there."""

    b: torch.Tensor  # (B, 1.., 1, 1)
    h: torch.Tensor  # (1, *heads, 1, 1)
    i: torch.Tensor  # (rows, 1)
    j: torch.Tensor  # (1, cols)
    read: Callable  # (x, b, h, i, j) -> x at these indices: a slice, not a gather


def tile(batch: int, heads: tuple[int, ...], rows: range, cols: range, device) -> Tile:
    """Rows x keys of the score matrix laid out ``(B, *heads, rows, cols)``; the tiled kernel's
    ``heads`` are ``(H_kv, G)``, query heads grouped by their KV head."""

    def read(x, *_):  # x (B, H_q, N_q, N_k), a broadcast view
        return x[:, :, rows.start : rows.stop, cols.start : cols.stop].reshape(batch, *heads, len(rows), len(cols))

    return Tile(
        torch.arange(batch, device=device).view(batch, *(1,) * len(heads), 1, 1),
        torch.arange(math.prod(heads), device=device).view(1, *heads, 1, 1),
        torch.arange(rows.start, rows.stop, device=device)[:, None],
        torch.arange(cols.start, cols.stop, device=device)[None, :],
        read,
    )


def full_grid(batch: int, heads: int, n_q: int, n_k: int, device) -> Tile:
    """The whole score matrix, ``(B, H_q, N_q, N_k)``: tensors are read as they are, broadcast."""
    return tile(batch, (heads,), range(n_q), range(n_k), device)._replace(read=lambda x, *_: x)


class Diagonals(NamedTuple):
    """The causal and window rules as bounds on ``j - i``: each an int or per-item array, or None."""

    causal: Any = None  # j - i <= causal: 0 (sdpa.causal.top_left) or offset(b) (sdpa.causal.bottom_right)
    left: Any = None  # j - i >= left: offset(b) - left (sdpa.window; 0 - left: sdpa.window.top_left)
    right: Any = None  # j - i <= right: offset(b) + right (sdpa.window; 0 + right: sdpa.window.top_left)


@dataclass(frozen=True)
class Rules:
    """The visibility rules and score modifiers of one ``sdpa`` call.

    ``q_lens``/``kv_lens`` are ``(B,)`` int64 tensors on the device (index functions) or host
    NumPy arrays (tile planning); without them no position is padding and ``offset(b) = N_k - N_q``.
    ``mask`` and ``bias`` broadcast to ``(B, H_q, N_q, N_k)`` (expanded to it where gathered),
    ``slopes`` is ``(B, H_q)``. A traced caller (Flex) passes the window sides and ``softcap`` as
    0-dim tensors: Dynamo specialises, recompiling, on each Python number it captures.
    """

    n_q: int
    n_k: int
    causal: str | None = None
    left: Any = None  # sdpa.window's sides, None where unbounded (-1): see window_sides
    right: Any = None
    q_lens: Any = None
    kv_lens: Any = None
    mask: torch.Tensor | None = None
    softcap: Any = None
    bias: torch.Tensor | None = None
    slopes: torch.Tensor | None = None
    window_top_left: bool = False  # sdpa.window.top_left: the window measured from i, not i + offset(b)

    @property
    def modifies(self) -> bool:
        return self.softcap is not None or self.bias is not None or self.slopes is not None

    def to(self, device) -> Rules:
        """These rules with the lengths as tensors on ``device``."""
        return replace(
            self,
            q_lens=torch.as_tensor(self.q_lens, device=device),
            kv_lens=torch.as_tensor(self.kv_lens, device=device),
        )

    def offset(self, b):
        """``offset(b) = kv_len(b) - q_len(b)``: query ``i`` is aligned with key ``i + offset(b)``."""
        return self.n_k - self.n_q if self.q_lens is None else self.kv_lens[b] - self.q_lens[b]

    def diagonals(self, offset) -> Diagonals:
        """The bounds on ``j - i`` for ``offset`` (``offset(b)`` of the items in question)."""
        causal = 0 if self.causal == "top_left" else offset if self.causal == "bottom_right" else None
        at = 0 if self.window_top_left else offset
        return Diagonals(
            causal,
            None if self.left is None else at - self.left,
            None if self.right is None else at + self.right,
        )

    def key_present(self, b, j):
        """``j < kv_len(b)``: the key half of ``sdpa.padding`` (keys past it are never read)."""
        return j < self.kv_lens[b]

    def visible(self, b, h, i, j, read: Callable = gather):
        """``mask_mod``: True where query ``i`` may see key ``j`` in batch item ``b``, head ``h``."""
        # sdpa.padding
        ok = i >= 0 if self.q_lens is None else (i < self.q_lens[b]) & self.key_present(b, j)
        d = self.diagonals(self.offset(b))
        if d.causal is not None:
            ok = ok & (j <= i + d.causal)  # sdpa.causal.*
        if d.left is not None:
            ok = ok & (j >= i + d.left)  # sdpa.window
        if d.right is not None:
            ok = ok & (j <= i + d.right)
        if self.mask is not None:
            ok = ok & read(self.mask, b, h, i, j)  # sdpa.mask
        return ok

    def modify(self, score, b, h, i, j, read: Callable = gather):
        """``score_mod`` on scaled scores: ``sdpa.softcap``, then ``sdpa.bias`` and ``sdpa.alibi``."""
        if self.softcap is not None:
            score = torch.tanh(score / self.softcap) * self.softcap
        if self.bias is not None:
            score = score + read(self.bias, b, h, i, j).to(score.dtype)
        if self.slopes is not None:
            distance = (i + self.offset(b) - j).abs()
            score = score - self.slopes[b, h] * distance.to(self.slopes.dtype)
        return score


def window_sides(window) -> tuple:
    """``sdpa.window``'s ``(left, right)`` with an unbounded side (-1) as None; (None, None) without one."""
    return (None, None) if window is None else tuple(None if side < 0 else side for side in window)


def restricts(causal=None, window=None, mask=None, q_lens=None, kv_lens=None) -> bool:
    """Whether any visibility rule is given (else every key is visible to every query)."""
    return not (causal is None and window is None and mask is None and q_lens is None and kv_lens is None)


def lengths(q, k, q_lens, kv_lens):
    """``(q_lens, kv_lens)`` as int64 tensors on ``q``'s device; the full lengths where not given."""
    b, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    q_lens = torch.full((b,), n_q, device=q.device) if q_lens is None else q_lens.to(q.device, torch.int64)
    kv_lens = torch.full((b,), n_k, device=q.device) if kv_lens is None else kv_lens.to(q.device, torch.int64)
    return q_lens, kv_lens


# Tile planning, on host lengths. A key tile [c0, c1) against rows [r0, r1): its pairs have
# j - i from c0 - (r1 - 1) to c1 - 1 - r0.


def row_range(rules: Rules, c0: int, c1: int) -> tuple[int, int]:
    """The query rows ``[lo, hi)`` that may see a key in ``[c0, c1)`` in some batch item; empty:
    the key tile is skipped."""
    if c0 >= rules.kv_lens.max(initial=0):
        return 0, 0
    d = rules.diagonals(rules.kv_lens - rules.q_lens)
    lo, hi = 0, int(rules.q_lens.max(initial=0))
    for upper in (d.causal, d.right):  # j - i <= upper: rows from c0 - upper on see key c0
        if upper is not None:
            lo = max(lo, c0 - int(np.max(upper)))
    if d.left is not None:  # j - i >= left: rows up to c1 - 1 - left see key c1 - 1
        hi = min(hi, c1 - int(np.min(d.left)))
    return max(lo, 0), hi


def fully_visible(rules: Rules, r0: int, r1: int, c0: int, c1: int) -> bool:
    """True if every pair of rows ``[r0, r1)`` and keys ``[c0, c1)`` is visible in every batch
    item: the tile needs no mask."""
    if rules.mask is not None or c1 > min(rules.kv_lens, default=0) or r1 > min(rules.q_lens, default=0):
        return False
    d = rules.diagonals(rules.kv_lens - rules.q_lens)
    below = all(c1 - 1 - r0 <= np.min(upper) for upper in (d.causal, d.right) if upper is not None)
    return below and (d.left is None or c0 - (r1 - 1) >= np.max(d.left))


def causal_diagonal_end(rules: Rules, c1: int) -> int | None:
    """The first row from which the causal rule lets every item see every key before ``c1``
    (rows before it are on the diagonal of that key tile); None without a causal rule."""
    d = rules.diagonals(rules.kv_lens - rules.q_lens)
    if d.causal is None:
        return None
    return c1 - 1 - int(min(np.ravel(d.causal), default=0))


def visible_pairs(n_q: int, n_k: int, causal=None, window=None) -> int:
    """The (query, key) pairs that the causal and window rules let through, without padding (the
    work of an attention that skips all others)."""
    rules = Rules(n_q, n_k, causal, *window_sides(window))
    d = rules.diagonals(n_k - n_q)
    i = np.arange(n_q, dtype=np.int64)
    lo = np.zeros(n_q, np.int64) if d.left is None else np.maximum(0, i + d.left)
    hi = np.full(n_q, n_k - 1, np.int64)
    for upper in (d.causal, d.right):
        if upper is not None:
            hi = np.minimum(hi, i + upper)
    return int(np.clip(hi - lo + 1, 0, None).sum())
