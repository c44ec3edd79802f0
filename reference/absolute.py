"""Absolute positional encodings: sinusoidal (two channel layouts) and learned tables."""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic

SINUSOIDAL_LAYOUTS = ("interleaved", "concat", "t2t")


@reference("sinusoidal")
def sinusoidal(positions, dim, *, layout="interleaved", base=10000.0, arithmetic: Arithmetic = EXACT) -> np.ndarray:
    """Sinusoidal encoding of shape ``(len(positions), dim)``.

    Clauses ``pe.sinusoidal.interleaved`` (``sin, cos, sin, cos, ...``),
    ``pe.sinusoidal.concat`` (``[sin | cos]``) and ``pe.sinusoidal.t2t`` (``[sin | cos]`` with
    tensor2tensor's frequencies ``base ** (-c / (dim/2 - 1))``).
    """
    dim = check.integer("dim", dim, low=1)
    if dim % 2:
        raise ValueError(f"dim must be even; got {dim}")
    check.choice("layout", layout, SINUSOIDAL_LAYOUTS)
    if layout == "t2t" and dim < 4:  # the exponent divides by dim/2 - 1 (fairseq: ZeroDivisionError)
        raise ValueError(f"dim must be >= 4 for layout='t2t'; got {dim}")
    base = check.positive_float("base", base)
    pos = check.int_array("positions", positions, low=0)
    if pos.ndim != 1:
        raise ValueError(f"positions must be 1-D; got shape {pos.shape}")
    check.fits_in_memory("sinusoidal", ("encoding (len(positions), dim)", (pos.size, dim), 8))

    half = dim // 2
    exponents = np.arange(half) / (half - 1) if layout == "t2t" else 2.0 * np.arange(half) / dim
    freqs = (base**-exponents).astype(arithmetic.compute)  # w_c
    angles = pos[:, None].astype(arithmetic.compute) * freqs[None, :]
    sin, cos = arithmetic.round(np.sin(angles)), arithmetic.round(np.cos(angles))
    if layout == "interleaved":
        # Stacking on a new last axis and flattening puts sin at 2c and cos at 2c + 1.
        return np.stack([sin, cos], axis=-1).reshape(len(pos), dim)
    return np.concatenate([sin, cos], axis=-1)


@reference("learned")
def learned(table, positions) -> np.ndarray:
    """Rows of a learned table: ``table[positions]``, shape ``positions.shape + (dim,)``.

    Clause ``pe.learned``. A position outside ``[0, max_positions)`` is an error: NumPy would
    wrap negative indices, and a clamp would hide a too-short table.
    """
    table = check.float_array("table", table, ndim=2)
    pos = check.int_array("positions", positions, low=0, high=table.shape[0] - 1)
    return table[pos]
