"""The cost clauses' check: peak memory grows at most linearly, measured by the backend's own counter.

Deterministic, never a timing: the backend's :meth:`~attnspec.Backend.peak_memory` (NumPy's
allocator through tracemalloc, PyTorch's allocator statistics or profiler events) at two sizes
four times apart. Linear growth is x4 and an ``N x N`` array gives x16; the limit is x8.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from attnspec.conformance.assertions import Checker
from attnspec.conformance.target import current, decline
from attnspec.contract import Unsupported

#: Growth allowed for x4 in size: halfway, on a log scale, between linear (x4) and quadratic (x16).
LIMIT = 8.0


def check_linear_memory(
    check: Checker,
    op: str,
    build: Callable[[int], tuple[tuple, dict, object]],
    *,
    sizes: tuple[int, int] = (256, 1024),
    axis: str = "N",
) -> None:
    """``backend.<op>(*args, **kwargs)`` with ``build(size) -> (args, kwargs, case)`` at both sizes.

    The first size runs once unmeasured: one-time allocations (imports, caches, a BLAS workspace)
    are not the kernel's and would hide the growth. ``axis`` names what ``size`` is in the message;
    for ``"N"`` a size beyond the backend's ``max_seq_len`` declines the check.
    """
    __tracebackhide__ = True
    if sizes[1] != 4 * sizes[0]:
        raise ValueError(f"sizes must be four times apart (the limit is set for x4); got {sizes}")
    backend = current().backend
    if axis == "N" and backend.max_seq_len is not None and backend.max_seq_len < max(sizes):
        decline(f"N = {max(sizes)} is beyond the declared max_seq_len {backend.max_seq_len}")
    peaks: list[int] = []
    for size in sizes:
        args, kwargs, case = build(size)
        native = [_native(backend, a) for a in args]
        native_kwargs = {name: _native(backend, x) for name, x in kwargs.items() if x is not None}
        run = functools.partial(getattr(backend, op), *native, **native_kwargs)
        try:
            if not peaks:
                run()  # warm-up
            _, peak = backend.peak_memory(run)
        except Unsupported as exc:
            decline(f"{op}: {exc}")
        if peak is None:
            decline("the backend has no peak-memory counter (Backend.peak_memory returned None)")
        peaks.append(peak)
    growth = peaks[1] / max(peaks[0], 1)
    if not growth < LIMIT:
        check.fail(
            f"peak memory grows faster than linearly in {axis}",
            case,
            f"peak {peaks[0]} bytes at {axis} = {sizes[0]}, {peaks[1]} at {axis} = {sizes[1]}: "
            f"x{growth:.1f} for x4 in {axis} (linear is x4, an N x N array gives x16; "
            f"the limit is x{LIMIT:g})",
        )


def _native(backend, value):
    return backend.to_native(value) if isinstance(value, np.ndarray) else value
