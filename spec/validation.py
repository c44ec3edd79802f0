"""Argument validation: what is an error, shared by the reference and every backend.

A call that breaks one of these rules MUST raise (``TypeError`` for a wrong kind of value,
``ValueError`` for a wrong shape or range) with a message that names the argument and what was
expected, so that a wrong call fails at the boundary, never with an IndexError from deep inside
or, worse, a silent guess. The float64 reference (:mod:`attnspec.reference`) validates through
these functions; a backend imports them to reject exactly what the reference rejects.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import TypeVar

import numpy as np

#: The values of ``causal``: no causal rule, or aligned to the top-left or the bottom-right corner.
CAUSAL = (None, "top_left", "bottom_right")


T = TypeVar("T")


def float_array(name: str, x, *, ndim: int | None = None) -> np.ndarray:
    """``x`` as a float64 array; TypeError for integer, boolean, complex or object input."""
    arr = np.asarray(x)
    if not is_real_float(arr.dtype):
        got = f"dtype {arr.dtype}" if hasattr(x, "dtype") or arr.dtype.kind in "iub" else f"{x!r:.60}"
        raise TypeError(f"{name} must be a real floating-point array; got {got}")
    if ndim is not None:
        dims(name, arr, ndim)
    return arr.astype(np.float64)


def dims(name: str, x, ndim: int) -> None:
    """ValueError unless ``x`` (a NumPy array or a tensor) has ``ndim`` dimensions."""
    if len(x.shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {tuple(x.shape)}")


def same_dtype(**arrays) -> None:
    """TypeError unless every array has one dtype: a backend computes in its inputs' dtype, and
    mixing them is a caller's mistake that the kernel would report, if at all, from inside."""
    dtypes = {name: x.dtype for name, x in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"{', '.join(dtypes)} must share one dtype; got {listed}")


def is_real_float(dtype: np.dtype) -> bool:
    """True for NumPy's float dtypes and ml_dtypes' (bfloat16, float8), whose kind is 'V'."""
    if dtype.kind not in "fV":
        return False
    if dtype.kind == "f":
        return True
    try:
        import ml_dtypes

        ml_dtypes.finfo(dtype)
        return True
    except (ImportError, ValueError, TypeError):
        return False


def int_array(
    name: str, x, *, shape: tuple | None = None, low: int | None = None, high: int | None = None
) -> np.ndarray:
    """``x`` as an int64 array with ``low <= x <= high``; rejects floats (NaN included) and bools."""
    arr = np.asarray(x)
    if arr.size == 0 and arr.dtype.kind == "f" and not isinstance(x, np.ndarray):
        arr = arr.astype(np.int64)  # an empty list has NumPy's default float dtype
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an integer array; got dtype {arr.dtype}"
            + (" containing NaN" if arr.dtype.kind == "f" and np.isnan(arr).any() else "")
        )
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


def choice(name: str, x, options: tuple[T, ...]) -> T:
    if x not in options:
        raise ValueError(f"{name} must be one of {options}; got {x!r}")
    return x


class TooLarge(ValueError, MemoryError):
    """A call refused before it allocates: its arrays cannot fit in the memory available.

    A MemoryError too, so that code which catches NumPy's MemoryError still catches it."""


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), else the physical memory; None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


#: Below this many bytes a call is not checked against the memory available (reading it costs time).
SMALL = 1 << 26


def fits_in_memory(op: str, *arrays: tuple[str, tuple, int]) -> None:
    """:class:`TooLarge` if ``op`` cannot hold ``arrays`` at once, before it allocates any of them.

    Each array is ``(what, shape, itemsize)``: ``what`` names the array in the caller's terms
    (``"scores (B, H_q, N_q, N_k)"``). The sum is a lower bound of what ``op`` needs, so a call
    refused here would have failed, or exhausted the machine, inside NumPy.
    """
    need = sum(math.prod(shape) * itemsize for _, shape, itemsize in arrays)
    if need < SMALL:
        return
    available = available_memory()
    if available is None or need <= available:
        return
    listed = ", ".join(f"{what} = {tuple(shape)}" for what, shape, _ in arrays)
    raise TooLarge(f"{op} needs at least {_gib(need)} of memory for its {listed}; {_gib(available)} is available")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def stand_in(x) -> np.ndarray:
    """A zero-stride NumPy array of ``x``'s shape (a tensor or device array: no copy, no device
    read), for the shape checks here."""
    return np.broadcast_to(np.zeros((), np.float64), tuple(x.shape))


def broadcastable(name: str, x: np.ndarray, shape: tuple) -> np.ndarray:
    """``x`` broadcast to ``shape`` (a view); ValueError naming ``name`` if it does not fit."""
    try:
        return np.broadcast_to(x, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {x.shape} is not broadcastable to {shape} (B, H_q, N_q, N_k)") from None


def kv_shapes(q, k, v, names: tuple[str, str, str] = ("q", "k", "v")) -> tuple[int, int]:
    """``(H_kv, N_k)`` of ``(B, H, N, D)`` arrays ``q, k, v`` that fit together (clause ``sdpa.gqa``).

    ``q``, ``k``, ``v`` are NumPy arrays or tensors of 4 dimensions; ``names`` are the caller's
    names for them (``decode`` calls its keys ``k_cache``).
    """
    nq, nk, nv = names
    qs, ks, vs = (tuple(x.shape) for x in (q, k, v))
    b, h_q, _, d_qk = qs
    if ks[0] != b or vs[0] != b:
        raise ValueError(f"batch sizes differ: {nq} {qs}, {nk} {ks}, {nv} {vs} (expected (B, H, N, D) each)")
    if ks[3] != d_qk:
        raise ValueError(f"{nk}'s head dim must equal {nq}'s (D_qk = {d_qk}); got {nk} of shape {ks}")
    if vs[1:3] != ks[1:3]:
        raise ValueError(f"{nv} must have {nk}'s heads and length (H_kv, N_k) = {ks[1:3]}; got {nv} of shape {vs}")
    if d_qk < 1:
        raise ValueError(f"head dim D_qk must be >= 1; got {nq} of shape {qs}")
    h_kv = ks[1]
    if h_kv < 1 or h_q % h_kv:
        raise ValueError(f"H_q = {h_q} ({nq}.shape[1]) must be a multiple of H_kv = {h_kv} ({nk}.shape[1])")
    return h_kv, ks[2]


#: The page layouts of ``paged_decode``, by FlashInfer's names: token-major pages
#: ``(num_pages, page_size, H_kv, D)`` (``flash.paged``) and head-major pages
#: ``(num_pages, H_kv, page_size, D)`` (``flash.paged.head_major``).
PAGE_LAYOUTS = ("NHD", "HND")


def paged_cache(q, k_pages, v_pages, block_table, cache_lens, layout) -> tuple[str, np.ndarray, np.ndarray]:
    """``(layout, block_table, cache_lens)`` of a ``paged_decode`` call that fits together
    (clauses ``flash.paged``, ``flash.paged.head_major``, ``flash.paged.unused``).

    ``q``, ``k_pages``, ``v_pages`` are NumPy arrays or tensors (only their shapes are read);
    ``block_table`` and ``cache_lens`` are host arrays, returned as int64. Only the entries in use
    (``i < ceil(cache_lens[b] / page_size)``) must be pool indices: the others may hold anything.
    """
    layout = choice("layout", layout, PAGE_LAYOUTS)
    for name, x in (("q", q), ("k_pages", k_pages), ("v_pages", v_pages)):
        dims(name, x, 4)
    axes = "(num_pages, page_size, H_kv, D)" if layout == "NHD" else "(num_pages, H_kv, page_size, D)"
    ks, vs, qs = tuple(k_pages.shape), tuple(v_pages.shape), tuple(q.shape)
    if vs[:3] != ks[:3]:
        raise ValueError(
            f"v_pages must have k_pages's first three axes {ks[:3]} (layout {layout!r}: {axes}); got v_pages of shape {vs}"
        )
    num_pages, page_size, h_kv = (ks[0], ks[1], ks[2]) if layout == "NHD" else (ks[0], ks[2], ks[1])
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1; got k_pages of shape {ks} (layout {layout!r}: {axes})")
    if ks[3] != qs[3]:
        raise ValueError(f"k_pages's head dim must equal q's (D_qk = {qs[3]}); got k_pages of shape {ks}")
    if qs[3] < 1:
        raise ValueError(f"head dim D_qk must be >= 1; got q of shape {qs}")
    if h_kv < 1 or qs[1] % h_kv:
        raise ValueError(
            f"H_q = {qs[1]} (q.shape[1]) must be a multiple of H_kv = {h_kv} (k_pages of shape {ks}, layout {layout!r})"
        )
    batch = qs[0]
    table = int_array("block_table", block_table)
    if table.ndim != 2 or table.shape[0] != batch:
        raise ValueError(f"block_table must have shape (B, max_pages) with B = {batch} (q.shape[0]); got {table.shape}")
    lens = int_array("cache_lens", cache_lens, shape=(batch,), low=0)
    capacity = table.shape[1] * page_size
    if lens.size and lens.max() > capacity:
        b = int(lens.argmax())
        raise ValueError(
            f"cache_lens must be <= max_pages * page_size = {table.shape[1]} * {page_size} = {capacity} "
            f"(block_table.shape[1] * page_size); got cache_lens[{b}] = {lens[b]}"
        )
    in_use = np.arange(table.shape[1]) < -(-lens[:, None] // page_size)
    wrong = in_use & ((table < 0) | (table >= num_pages))
    if wrong.any():
        b, i = (int(x) for x in np.argwhere(wrong)[0])
        raise ValueError(
            f"block_table[{b}, {i}] = {table[b, i]} is not a page of the pool (0 <= index < num_pages = {num_pages}); "
            f"the entry is in use, as cache_lens[{b}] = {lens[b]} > {i} * page_size = {i * page_size}"
        )
    return layout, table, lens


def partials(outs, lses) -> None:
    """Shapes of ``merge_partials``' arguments: ``outs`` ``(S, B, H, N, D_v)``, ``lses`` ``(S, B, H, N)``, ``S >= 1``."""
    dims("outs", outs, 5)
    dims("lses", lses, 4)
    if tuple(lses.shape) != tuple(outs.shape[:4]):
        raise ValueError(
            f"lses must have shape outs.shape[:4] = {tuple(outs.shape[:4])} (S, B, H, N); got {tuple(lses.shape)}"
        )
    if lses.shape[0] == 0:
        raise ValueError("outs and lses must hold at least one partial result (S >= 1)")


def causal(causal):
    """``causal`` as one of :data:`CAUSAL`; a bool is an error (clause ``sdpa.causal.top_left``)."""
    if causal is True or causal is False:
        raise ValueError(
            "causal must be None, 'top_left' or 'bottom_right'; a bool is ambiguous when "
            "N_q != N_k (PyTorch aligns top-left, flash-attn bottom-right)"
        )
    return choice("causal", causal, CAUSAL)


def window(window):
    """A sliding window ``(left, right)`` of integers ``>= -1``, or None for none (clause ``sdpa.window``)."""
    if window is None:
        return None
    if isinstance(window, np.ndarray) and window.shape == (2,):
        window = tuple(window.tolist())
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a pair (left, right); got {window!r}")
    left = integer("window[0] (left)", window[0], low=-1)
    right = integer("window[1] (right)", window[1], low=-1)
    return None if (left, right) == (-1, -1) else (left, right)


#: The values of ``window_align``: the corner the window is aligned to (``sdpa.window`` and
#: ``sdpa.window.top_left``); None is bottom-right.
WINDOW_ALIGN = (None, "bottom_right", "top_left")


def window_align(align) -> str:
    """``window_align`` as ``"bottom_right"`` or ``"top_left"`` (None: bottom-right, ``sdpa.window``)."""
    return choice("window_align", align, WINDOW_ALIGN) or "bottom_right"


def mask(mask, full: tuple) -> np.ndarray:
    """A boolean mask broadcast to ``full`` = ``(B, H_q, N_q, N_k)`` (clause ``sdpa.mask``)."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array (True = may attend); got dtype {mask.dtype}")
    return broadcastable("mask", mask, full)


def bias(bias, full: tuple) -> np.ndarray:
    """A float bias, finite or ``-inf``, broadcast to ``full`` (clause ``sdpa.bias``)."""
    bias = float_array("bias", bias)
    if np.isnan(bias).any() or np.isposinf(bias).any():
        raise ValueError("bias must be finite or -inf (use -inf to exclude a key); got NaN or +inf")
    return broadcastable("bias", bias, full)


def alibi_slopes(slopes, b: int, h_q: int) -> np.ndarray:
    """Finite slopes of shape ``(H_q,)`` or ``(B, H_q)``, broadcast to ``(B, H_q)`` (clause ``sdpa.alibi``)."""
    slopes = float_array("alibi_slopes", slopes)
    if slopes.shape not in ((h_q,), (b, h_q)):
        raise ValueError(
            f"alibi_slopes must have shape (H_q,) = ({h_q},) or (B, H_q) = ({b}, {h_q}); got {slopes.shape}"
        )
    if not np.isfinite(slopes).all():
        raise ValueError("alibi_slopes must be finite")
    return np.broadcast_to(slopes, (b, h_q))
