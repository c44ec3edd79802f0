"""``numpy``: the float64 reference as a backend, in float64 and float32.

Every operation runs its registered reference (:data:`attnspec.clauses.REFERENCES`) in float64
and rounds its floating-point results to the dtype of the first argument, so this backend passes
every clause by construction and serves as the control beside the mutants. A new operation needs
no code here once its reference is registered.

A floating-point array in a dtype the backend does not declare (float16, bfloat16) is a TypeError:
computed in float64 and rounded back, it would pass for a float16 result the backend never claimed.
Array-likes that are not arrays (lists) are converted as the reference converts them, and the
result is then float64, the reference's dtype.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np

from attnspec import reference as _references  # noqa: F401 (imports every reference, so all are registered)
from attnspec import validation as check
from attnspec.clauses import OPERATIONS, REFERENCES
from attnspec.contract import Backend, numpy_peak_memory
from attnspec.reference import alibi

#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"numpy": "NumpyBackend"}


class NumpyBackend(Backend):
    name = "numpy"
    clauses = ("*",)
    dtypes = ("float64", "float32")
    devices = ("cpu",)

    def peak_memory(self, fn):
        return numpy_peak_memory(fn)

    def alibi_bias(self, slopes, n_q, n_k, **kwargs):
        self.check_dtypes({"slopes": slopes})
        return alibi.alibi_bias(slopes, n_q, n_k, **kwargs)  # the bias stays float64, as the reference gives it

    def check_dtypes(self, arguments: dict) -> None:
        """TypeError naming the first floating-point array argument in a dtype not in :attr:`dtypes`."""
        for name, x in arguments.items():
            if isinstance(x, np.ndarray) and check.is_real_float(x.dtype) and x.dtype.name not in self.dtypes:
                raise TypeError(
                    f"{name} has dtype {x.dtype}, which the {self.name} backend does not declare "
                    f"(its dtypes: {', '.join(self.dtypes)})"
                )


def _rounded(fn: Callable) -> Callable:
    """``fn`` as a method whose floating-point results take the dtype of a floating first argument."""
    signature = inspect.signature(fn)
    positional = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]

    @functools.wraps(fn)
    def method(self, first, *args, **kwargs):
        self.check_dtypes({**dict(zip(positional, (first, *args), strict=False)), **kwargs})
        result = fn(first, *args, **kwargs)
        dtype = first.dtype if isinstance(first, np.ndarray) and np.issubdtype(first.dtype, np.floating) else None
        if dtype is None:
            return result
        if isinstance(result, tuple):
            return tuple(_as(dtype, r) for r in result)
        return _as(dtype, result)

    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()]
    )
    return method


def _as(dtype, x):
    return x.astype(dtype) if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) else x


for _op in OPERATIONS:
    if _op not in vars(NumpyBackend):
        setattr(NumpyBackend, _op, _rounded(REFERENCES[_op]))
