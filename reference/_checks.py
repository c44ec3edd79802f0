"""Argument checks shared by the reference functions.

Every error names the argument and what was expected, so that a wrong call fails at the
boundary with a message a user can act on, never with an IndexError from deep inside.
"""

from __future__ import annotations

import numbers
from typing import TypeVar

import numpy as np


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


def int_array(name: str, x, *, shape: tuple | None = None, low: int | None = None,
              high: int | None = None) -> np.ndarray:
    """``x`` as an int64 array with ``low <= x <= high``; rejects floats (NaN included) and bools."""
    arr = np.asarray(x)
    if arr.size == 0 and arr.dtype.kind == "f" and not isinstance(x, np.ndarray):
        arr = arr.astype(np.int64)  # an empty list has NumPy's default float dtype
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array; got dtype {arr.dtype}"
                        + (" containing NaN" if arr.dtype.kind == "f" and np.isnan(arr).any() else ""))
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


T = TypeVar("T")


def choice(name: str, x, options: tuple[T, ...]) -> T:
    if x not in options:
        raise ValueError(f"{name} must be one of {options}; got {x!r}")
    return x


def broadcastable(name: str, x: np.ndarray, shape: tuple) -> np.ndarray:
    """``x`` broadcast to ``shape`` (a view); ValueError naming ``name`` if it does not fit."""
    try:
        return np.broadcast_to(x, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {x.shape} is not broadcastable to {shape} "
                         "(B, H_q, N_q, N_k)") from None
