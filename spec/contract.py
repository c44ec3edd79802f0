"""The backend contract: what a backend is and how it declares what it supports.

A backend is a subclass of :class:`Backend`. It declares

- ``name``: how reports refer to it;
- ``clauses``: the clause IDs it implements (exact IDs or globs such as ``"sdpa.*"``); the suite
  checks exactly these and reports every other clause as unsupported, with the reason;
- ``dtypes``: a subset of :data:`DTYPES`; ``devices``: e.g. ``("cpu",)`` or ``("cuda",)``;
- ``max_head_dim`` and ``max_seq_len``: limits the suite's strategies respect (``None``: none);

and implements, as methods, the operation (:data:`OPERATIONS`) named by each declared clause.

Arrays cross the boundary as NumPy arrays in the target dtype (``ml_dtypes.bfloat16`` for
bfloat16): the suite calls :meth:`Backend.to_native` on every array argument and
:meth:`Backend.to_numpy` on every array result. Outputs MUST have the input dtype; the LSE MAY
be float32 for 16-bit inputs.

A backend that cannot run one particular case (a head dimension it has no kernel for, a mask
form its kernel lacks) raises :class:`Unsupported` with the reason: the suite records the case
as declined and moves on. A case it declared and computes wrongly is a failure. There is no
fallback: a backend never silently hands a case to another implementation.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from attnspec.clauses import CATALOG, OPERATIONS, expand

#: The dtypes a backend may declare, by name.
DTYPES = ("float64", "float32", "float16", "bfloat16")


class Unsupported(Exception):
    """Raised by a backend operation to decline one case; the message is the reason."""


class BackendError(Exception):
    """A backend could not be loaded, or does not meet the contract; the message says why."""


class Backend:
    """Base class of every backend. Subclass it, declare, and implement the operations."""

    name: str = ""
    clauses: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu",)
    max_head_dim: int | None = None
    max_seq_len: int | None = None

    def __init__(self, device: str | None = None):
        self.device = device if device is not None else self.devices[0]

    def to_native(self, array: np.ndarray) -> Any:
        """Convert a NumPy array (already in the target dtype) to this backend's array type."""
        return array

    def to_numpy(self, value: Any) -> np.ndarray:
        """Convert a result back to a NumPy array, keeping its dtype (the suite upcasts to compare)."""
        return np.asarray(value)

    def peak_memory(self, fn: Callable[[], Any]) -> tuple[Any, int | None]:
        """Run ``fn`` and return its result with the peak bytes it allocated, or None if unknown.

        The default knows no counter (``flash.memory`` is then declined). A backend that allocates
        through NumPy uses :func:`numpy_peak_memory`; a GPU backend its allocator's counter.
        """
        return fn(), None

    def __repr__(self) -> str:
        return f"<attnspec backend {self.name!r} on {self.device}>"

    @property
    def declared(self) -> frozenset[str]:
        """The clause IDs this backend declares, with globs expanded."""
        return expand(self.clauses)


def numpy_peak_memory(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the peak bytes it allocated through NumPy (``tracemalloc`` sees NumPy's allocator)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def validate(backend: Backend) -> Backend:
    """Check that ``backend`` meets the contract; raise BackendError saying what is wrong."""
    if not isinstance(backend, Backend):
        raise BackendError(f"a backend must be an instance of attnspec.Backend; got {type(backend).__name__}")
    label = backend.name or type(backend).__name__
    if not backend.name or not isinstance(backend.name, str):
        raise BackendError(f"backend {label}: 'name' must be a non-empty string")
    unknown = [d for d in backend.dtypes if d not in DTYPES]
    if not backend.dtypes or unknown:
        raise BackendError(f"backend {label}: 'dtypes' must be a non-empty subset of {DTYPES}; got {backend.dtypes}")
    if backend.device not in backend.devices:
        raise BackendError(f"backend {label} runs on {backend.devices}; device {backend.device!r} was asked for")
    try:
        declared = backend.declared
    except ValueError as exc:
        raise BackendError(f"backend {label}: {exc}") from None
    if not declared:
        raise BackendError(f"backend {label} declares no clause; set 'clauses', e.g. ('sdpa', 'sdpa.causal.*')")
    for clause_id in sorted(declared):
        op = CATALOG[clause_id].op
        if not callable(getattr(backend, op, None)):
            raise BackendError(
                f"backend {label} declares clause {clause_id!r} but has no method {op!r}; expected {OPERATIONS[op]}"
            )
    return backend
