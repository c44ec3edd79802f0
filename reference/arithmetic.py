"""In which precision a reference formula is evaluated.

The oracle is exact float64 (:data:`EXACT`). The conformance suite evaluates the same formulas
with float32 accumulation and every step rounded to a kernel's dtype, to measure the error a
naive implementation in that precision makes (the tolerance policy is relative to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Arithmetic:
    """Where the formula is evaluated: ``compute`` dtype, and ``storage`` dtype rounded to after each step.

    With ``sequential``, matrix products accumulate one term at a time in the compute dtype (a
    multiply and an add, each rounded): the textbook naive kernel, whose rounding error does not
    depend on which BLAS library the machine has.
    """

    compute: type[np.floating] = np.float64
    storage: npt.DTypeLike = None
    sequential: bool = False

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if not self.sequential:
            return a @ b
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        out = np.zeros(shape, dtype=self.compute)
        for t in range(a.shape[-1]):
            out += a[..., :, t : t + 1] * b[..., t : t + 1, :]
        return out

    def round(self, x: np.ndarray) -> np.ndarray:
        if self.storage is None:
            return x
        return np.asarray(x).astype(self.storage).astype(self.compute)


EXACT = Arithmetic()
