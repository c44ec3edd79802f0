"""``numpy``: the float64 reference as a backend, in float64 and float32.

Every operation runs its registered reference (:data:`attnspec.clauses.REFERENCES`) in float64
and rounds its floating-point results to the dtype of the first argument, so this backend passes
every clause by construction and serves as the control beside the mutants. A new operation needs
no code here once its reference is registered.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np

from attnspec import reference as _references  # noqa: F401 (imports every reference, so all are registered)
from attnspec.clauses import OPERATIONS, REFERENCES
from attnspec.contract import Backend, numpy_peak_memory
from attnspec.reference import alibi


class NumpyBackend(Backend):
    name = "numpy"
    clauses = ("*",)
    dtypes = ("float64", "float32")
    devices = ("cpu",)

    def peak_memory(self, fn):
        return numpy_peak_memory(fn)

    def alibi_bias(self, slopes, n_q, n_k, **kwargs):
        return alibi.alibi_bias(slopes, n_q, n_k, **kwargs)  # the bias stays float64, as the reference gives it


def _rounded(fn: Callable) -> Callable:
    """``fn`` as a method whose floating-point results take the dtype of a floating first argument."""

    @functools.wraps(fn)
    def method(self, first, *args, **kwargs):
        result = fn(first, *args, **kwargs)
        dtype = first.dtype if isinstance(first, np.ndarray) and np.issubdtype(first.dtype, np.floating) else None
        if dtype is None:
            return result
        if isinstance(result, tuple):
            return tuple(_as(dtype, r) for r in result)
        return _as(dtype, result)

    signature = inspect.signature(fn)
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
