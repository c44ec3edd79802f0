"""In which precision a reference formula is evaluated.

The oracle is exact float64 (:data:`EXACT`). The conformance suite evaluates the same formulas
with float32 accumulation and every step rounded to a kernel's dtype, to measure the error a
naive implementation in that precision makes (the tolerance policy is relative to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Arithmetic:
    """Where the formula is evaluated: ``compute`` dtype, and ``storage`` dtype rounded to after each step."""

    compute: type = np.float64
    storage: object = None

    def round(self, x: np.ndarray) -> np.ndarray:
        if self.storage is None:
            return x
        return np.asarray(x).astype(self.storage).astype(self.compute)


EXACT = Arithmetic()
