"""The dtypes a backend may declare, as NumPy types (bfloat16 from ``ml_dtypes``)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

NUMPY_DTYPES = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

#: The largest input magnitude whose scores stay finite in the dtype's naive evaluation
#: (float16 tops out at 65504; the others have float32's exponent range or more).
LARGE_MAGNITUDE = {"float64": 30.0, "float32": 30.0, "float16": 12.0, "bfloat16": 30.0}

#: The score magnitude of the "huge" tier: every score of a row near +HUGE_SCORE or -HUGE_SCORE.
#: Models without QK-norm develop massive activations (raw scores of -2.5e5 were reported in a
#: served bf16 model), while kernels are often written with finite stand-ins for -inf. float16's
#: tier is capped further per case so that q.k before scaling stays below its 65504.
HUGE_SCORE = {"float64": 2.5e5, "float32": 2.5e5, "float16": 3.0e4, "bfloat16": 2.5e5}


def numpy_dtype(name: str) -> np.dtype:
    return NUMPY_DTYPES[name]


def eps(name: str) -> float:
    return float(ml_dtypes.finfo(NUMPY_DTYPES[name]).eps)


def rounded(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` rounded to the dtype, with subnormals flushed to zero (kernels may flush them)."""
    dtype = NUMPY_DTYPES[name]
    tiny = float(ml_dtypes.finfo(dtype).tiny)
    x = np.where(np.abs(x) < tiny, 0.0, x)
    return x.astype(dtype)
