"""Rotary position embedding (RoPE), half-split and interleaved layouts, partial rotary."""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic

ROPE_LAYOUTS = ("half_split", "interleaved")


def _angles(pos: np.ndarray, rotary_dim: int, base: float, dtype=np.float64) -> np.ndarray:
    """``p * theta_c`` broadcastable to ``(B, H, N, rotary_dim / 2)``."""
    theta = (base ** (-2.0 * np.arange(rotary_dim // 2) / rotary_dim)).astype(dtype)
    angles = pos[..., None].astype(dtype) * theta
    # (N, r/2) -> (1, 1, N, r/2); (B, N, r/2) -> (B, 1, N, r/2): every head shares the positions.
    return angles[None, None] if pos.ndim == 1 else angles[:, None]


@reference("rope")
def rope(
    x, positions, *, layout="half_split", rotary_dim=None, base=10000.0, arithmetic: Arithmetic = EXACT
) -> np.ndarray:
    """Rotate channel pairs of ``x`` ``(B, H, N, D)`` by ``positions * theta_c``; float64 result.

    Clauses ``rope.half_split`` (channel ``c`` pairs with ``c + r/2``), ``rope.interleaved``
    (``2c`` pairs with ``2c + 1``) and ``rope.partial`` (channels ``r .. D-1`` unchanged).
    ``positions`` is ``(N,)`` or ``(B, N)``.
    """
    x = check.float_array("x", x, ndim=4)
    batch, _, n, d = x.shape
    check.choice("layout", layout, ROPE_LAYOUTS)
    base = check.positive_float("base", base)
    r = d if rotary_dim is None else check.integer("rotary_dim", rotary_dim, low=2)
    if r < 2 or r % 2 or r > d:
        raise ValueError(
            f"rotary_dim must be even with 2 <= rotary_dim <= D={d}; got {r}"
            + (" (the default, D)" if rotary_dim is None else "")
        )
    pos = check.int_array("positions", positions, low=0)
    if pos.shape not in ((n,), (batch, n)):
        raise ValueError(f"positions must have shape (N,)=({n},) or (B, N)=({batch}, {n}); got {pos.shape}")

    x = x.astype(arithmetic.compute)
    angles = _angles(pos, r, base, arithmetic.compute)
    cos, sin = np.cos(angles), np.sin(angles)
    # The two layouts differ only in which channels form a pair; the rotation is the same.
    if layout == "half_split":
        first, second = slice(0, r // 2), slice(r // 2, r)
    else:
        first, second = slice(0, r, 2), slice(1, r, 2)
    x1, x2 = x[..., first], x[..., second]
    out = x.copy()
    out[..., first] = x1 * cos - x2 * sin
    out[..., second] = x2 * cos + x1 * sin
    return arithmetic.round(out)
