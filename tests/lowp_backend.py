"""A 16-bit backend for the project's tests: the reference formula in float32, rounded to the dtype.

It is the naive implementation the tolerance policy measures against, so it must pass every
``sdpa`` clause at float16 and bfloat16; running the suite on it exercises the 16-bit paths
(rounding, magnitudes, probes) that the float64/float32 ``numpy`` backend never reaches.
"""

import numpy as np

import attnspec
from attnspec.conformance.tolerance import naive_arithmetic
from attnspec.reference.sdpa import attend, prepare


class RoundedReference(attnspec.Backend):
    name = "rounded-reference"
    clauses = ("sdpa*",)
    dtypes = ("bfloat16", "float16")

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        problem = prepare(q, k, v, **options)
        dtype = "bfloat16" if q.dtype.name == "bfloat16" else "float16"
        with np.errstate(over="ignore"):
            out, lse = attend(problem, range(problem.n_q), range(problem.n_k), naive_arithmetic(dtype))
        out = out.astype(q.dtype)
        return (out, lse.astype(np.float32)) if return_lse else out
