"""Calling a backend operation across the array boundary of the contract."""

from __future__ import annotations

import numpy as np

from attnspec.conformance.assertions import ConformanceError
from attnspec.conformance.target import current, decline
from attnspec.contract import Unsupported


def call_unguarded(op: str, *args, **kwargs):
    """``backend.<op>`` with arrays converted, letting every exception through (``Unsupported`` too)."""
    backend = current().backend
    return getattr(backend, op)(
        *[_to_native(backend, a) for a in args],
        **{k: _to_native(backend, v) for k, v in kwargs.items() if v is not None},
    )


def call(op: str, *args, **kwargs):
    """``backend.<op>(*args, **kwargs)`` with NumPy arrays converted both ways.

    Keyword arguments that are ``None`` are left out, so a backend sees only the options a case
    uses. ``Unsupported`` from the backend declines the case.
    """
    backend = current().backend
    native_args = [_to_native(backend, a) for a in args]
    native_kwargs = {k: _to_native(backend, v) for k, v in kwargs.items() if v is not None}
    try:
        result = getattr(backend, op)(*native_args, **native_kwargs)
    except Unsupported as exc:
        decline(f"{op}: {exc}")
    if isinstance(result, tuple):
        return tuple(None if r is None else backend.to_numpy(r) for r in result)
    return backend.to_numpy(result)


def call_sdpa(q, k, v, options: dict, *, op: str = "sdpa", return_lse: bool = True, **extra):
    """``(out, lse)`` from an attention operation; ``lse`` is None unless requested."""
    if op == "sdpa":
        result = call(op, q, k, v, return_lse=return_lse or None, **options, **extra)
    else:
        result = call(op, q, k, v, **options, **extra)
    out, lse = result if isinstance(result, tuple) else (result, None)
    if return_lse and lse is None:
        raise ConformanceError(f"{op} was asked for the LSE (return_lse=True) and returned none")
    return out, lse


def _to_native(backend, value):
    return backend.to_native(value) if isinstance(value, np.ndarray) else value
