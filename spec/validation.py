"""Argument validation: what is an error, shared by the reference and every backend.

A call that breaks one of these rules MUST raise (``TypeError`` for a wrong kind of value,
``ValueError`` for a wrong shape or range) with a message that names the argument and what was
expected, so that a wrong call fails at the boundary, never with an IndexError from deep inside
or, worse, a silent guess. The float64 reference (:mod:`attnspec.reference`) validates through
these functions; a backend imports them to reject exactly what the reference rejects.
"""

from __future__ import annotations

import numbers
from typing import TypeVar

import numpy as np

#: The values of ``causal``: no causal rule, or aligned to the top-left or the bottom-right corner.
CAUSAL = (None, "top_left", "bottom_right")


T = TypeVar("T")


def float_array(name: str, x, *, ndim: int | None = None) -> np.ndarray:
    """``x`` as a float64 array; TypeError for integer, boolean, complex or object input."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fV" or not _is_real_float(arr.dtype):
        raise TypeError(f"{name} must be a real floating-point array; got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {arr.shape}")
    return arr.astype(np.float64)


def _is_real_float(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 and float8 types have kind 'V'; accept them through their finfo.
    if dtype.kind == "f":
        return True
    try:
        import ml_dtypes

        ml_dtypes.finfo(dtype)
        return True
    except (ImportError, ValueError, TypeError):
        return False


def int_array(
    name: str, x, *, shape: tuple | None = None, low: int | None = None, high: int | None = None
) -> np.ndarray:
    """``x`` as an int64 array with ``low <= x <= high``; rejects floats (NaN included) and bools."""
    arr = np.asarray(x)
    if arr.size == 0 and arr.dtype.kind == "f" and not isinstance(x, np.ndarray):
        arr = arr.astype(np.int64)  # an empty list has NumPy's default float dtype
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an integer array; got dtype {arr.dtype}"
            + (" containing NaN" if arr.dtype.kind == "f" and np.isnan(arr).any() else "")
        )
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {arr.shape}")
    arr = arr.astype(np.int64)
    if low is not None and arr.size and arr.min() < low:
        raise ValueError(f"{name} must be >= {low}; got minimum {arr.min()}")
    if high is not None and arr.size and arr.max() > high:
        raise ValueError(f"{name} must be <= {high}; got maximum {arr.max()}")
    return arr


def integer(name: str, x, *, low: int | None = None) -> int:
    """A Python int ``>= low``; rejects bools and floats."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {x!r}")
    if low is not None and x < low:
        raise ValueError(f"{name} must be >= {low}; got {x}")
    return int(x)


def positive_float(name: str, x, *, allow_none: bool = False) -> float | None:
    """A finite float ``> 0`` (or None when allowed)."""
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {x!r}")
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be finite and > 0; got {x}")
    return float(x)


def finite_float(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {x!r}")
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite; got {x}")
    return float(x)


def choice(name: str, x, options: tuple[T, ...]) -> T:
    if x not in options:
        raise ValueError(f"{name} must be one of {options}; got {x!r}")
    return x


def broadcastable(name: str, x: np.ndarray, shape: tuple) -> np.ndarray:
    """``x`` broadcast to ``shape`` (a view); ValueError naming ``name`` if it does not fit."""
    try:
        return np.broadcast_to(x, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {x.shape} is not broadcastable to {shape} (B, H_q, N_q, N_k)") from None


def kv_shapes(q, k, v) -> tuple[int, int]:
    """``(H_kv, N_k)`` of ``(B, H, N, D)`` arrays ``q, k, v`` that fit together (clause ``sdpa.gqa``)."""
    b, h_q, _, d_qk = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"batch sizes differ: q {q.shape}, k {k.shape}, v {v.shape} (expected (B, H, N, D) each)")
    if k.shape[3] != d_qk:
        raise ValueError(f"k's head dim must equal q's (D_qk = {d_qk}); got k of shape {k.shape}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"v must have k's heads and length (H_kv, N_k) = {k.shape[1:3]}; got v of shape {v.shape}")
    if d_qk < 1:
        raise ValueError(f"head dim D_qk must be >= 1; got q of shape {q.shape}")
    h_kv = k.shape[1]
    if h_kv < 1 or h_q % h_kv:
        raise ValueError(f"H_q = {h_q} (q.shape[1]) must be a multiple of H_kv = {h_kv} (k.shape[1])")
    return h_kv, k.shape[2]


def causal(causal):
    """``causal`` as one of :data:`CAUSAL`; a bool is an error (clause ``sdpa.causal.top_left``)."""
    if causal is True or causal is False:
        raise ValueError(
            "causal must be None, 'top_left' or 'bottom_right'; a bool is ambiguous when "
            "N_q != N_k (PyTorch aligns top-left, flash-attn bottom-right)"
        )
    return choice("causal", causal, CAUSAL)


def window(window):
    """A sliding window ``(left, right)`` of integers ``>= -1``, or None for none (clause ``sdpa.window``)."""
    if window is None:
        return None
    if isinstance(window, np.ndarray) and window.shape == (2,):
        window = tuple(window.tolist())
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a pair (left, right); got {window!r}")
    left = integer("window[0] (left)", window[0], low=-1)
    right = integer("window[1] (right)", window[1], low=-1)
    return None if (left, right) == (-1, -1) else (left, right)


def mask(mask, full: tuple) -> np.ndarray:
    """A boolean mask broadcast to ``full`` = ``(B, H_q, N_q, N_k)`` (clause ``sdpa.mask``)."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array (True = may attend); got dtype {mask.dtype}")
    return broadcastable("mask", mask, full)


def bias(bias, full: tuple) -> np.ndarray:
    """A float bias, finite or ``-inf``, broadcast to ``full`` (clause ``sdpa.bias``)."""
    bias = float_array("bias", bias)
    if np.isnan(bias).any() or np.isposinf(bias).any():
        raise ValueError("bias must be finite or -inf (use -inf to exclude a key); got NaN or +inf")
    return broadcastable("bias", bias, full)


def alibi_slopes(slopes, b: int, h_q: int) -> np.ndarray:
    """Finite slopes of shape ``(H_q,)`` or ``(B, H_q)``, broadcast to ``(B, H_q)`` (clause ``sdpa.alibi``)."""
    slopes = float_array("alibi_slopes", slopes)
    if slopes.shape not in ((h_q,), (b, h_q)):
        raise ValueError(
            f"alibi_slopes must have shape (H_q,) = ({h_q},) or (B, H_q) = ({b}, {h_q}); got {slopes.shape}"
        )
    if not np.isfinite(slopes).all():
        raise ValueError("alibi_slopes must be finite")
    return np.broadcast_to(slopes, (b, h_q))
