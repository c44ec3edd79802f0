"""Arguments of an ``sdpa`` call on CuPy arrays, checked by the shared rules (:mod:`attnspec.validation`:
the same errors as the reference) and laid out for the kernels: strides in elements, broadcast
masks and biases as stride-0 views (never expanded), lengths on the device only where they cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cupy as cp
import numpy as np

from attnspec import validation as _checks


@dataclass(frozen=True)
class Problem:
    q: Any  # (B, H_q, N_q, D_qk), unit stride along D
    k: Any  # (B, H_kv, N_k, D_qk)
    v: Any  # (B, H_kv, N_k, D_v)
    scale: float
    causal: str | None
    window: tuple[int, int] | None
    window_top_left: bool  # sdpa.window.top_left: declined by the backend (its kernels align bottom-right)
    mask: Any  # bool (B, H_q, N_q, N_k) broadcast view, or None
    bias: Any  # float32 (B, H_q, N_q, N_k) broadcast view, or None
    softcap: float | None
    slopes: Any  # float32 (B, H_q) broadcast view, or None
    q_lens: Any  # int32 (B,) on the device, or None where no row is padding
    kv_lens: Any  # int32 (B,) on the device, or None where no key is padding

    @property
    def dtype(self) -> str:
        return dtype_name(self.q.dtype)

    @property
    def general(self) -> bool:
        """Whether the call needs the kernel's general score path (mask, bias, ALiBi, softcap)."""
        return any(x is not None for x in (self.mask, self.bias, self.slopes, self.softcap))


def dtype_name(dtype) -> str:
    return "bfloat16" if dtype.kind == "V" or str(dtype) == "bfloat16" else str(dtype)


def device_array(name: str, x):
    """``x`` if it is a floating-point CuPy array, else a TypeError naming ``name``."""
    if not isinstance(x, cp.ndarray):
        got = "None" if x is None else type(x).__name__
        raise TypeError(f"{name} must be a cupy.ndarray (convert arrays with the backend's to_native); got {got}")
    if not _checks.is_real_float(np.dtype(x.dtype)):
        raise TypeError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    return x


def host(x) -> np.ndarray:
    return cp.asnumpy(x) if isinstance(x, cp.ndarray) else np.asarray(x)


def unit_last_stride(x):
    """``x`` with stride 1 along its last axis (the kernels' rows are contiguous); a copy only if not."""
    return x if x.strides[-1] == x.itemsize or x.shape[-1] <= 1 else cp.ascontiguousarray(x)


def prepare(
    q,
    k,
    v,
    *,
    scale=None,
    causal=None,
    window=None,
    window_align=None,
    mask=None,
    bias=None,
    softcap=None,
    alibi_slopes=None,
    q_lens=None,
    kv_lens=None,
    names: tuple[str, str, str] = ("q", "k", "v"),
) -> Problem:
    """Check the arguments and lay them out; ``names`` are the caller's names of ``q, k, v``."""
    given = dict(zip(names, (q, k, v), strict=True))
    for name, x in given.items():
        _checks.dims(name, device_array(name, x), 4)
    _checks.same_dtype(**given)
    h_kv, n_k = _checks.kv_shapes(q, k, v, names)  # D_qk = 0 is an error, before 1 / sqrt(D_qk)
    b, h_q, n_q, d = q.shape
    full = (b, h_q, n_q, n_k)
    return Problem(
        q=unit_last_stride(q),
        k=unit_last_stride(k),
        v=unit_last_stride(v),
        scale=1.0 / math.sqrt(d) if scale is None else _checks.finite_float("scale", scale),
        causal=_checks.causal(causal),
        window=_checks.window(window),
        window_top_left=_checks.window_align(window_align) == "top_left",
        mask=None if mask is None else _mask(mask, full),
        bias=None if bias is None else _bias(bias, full),
        softcap=_checks.positive_float("softcap", softcap, allow_none=True),
        slopes=None if alibi_slopes is None else _slopes(alibi_slopes, b, h_q),
        q_lens=_lens("q_lens", q_lens, b, n_q),
        kv_lens=_lens("kv_lens", kv_lens, b, n_k),
    )


def _mask(mask, full: tuple):
    if not isinstance(mask, cp.ndarray) or mask.dtype != cp.bool_:
        got = f"dtype {mask.dtype}" if hasattr(mask, "dtype") else type(mask).__name__
        raise TypeError(f"mask must be a boolean cupy.ndarray (True = may attend); got {got}")
    _checks.broadcastable("mask", _checks.stand_in(mask), full)
    return cp.broadcast_to(mask, full)


def _bias(bias, full: tuple):
    bias = device_array("bias", bias)
    _checks.broadcastable("bias", _checks.stand_in(bias), full)
    if bool((cp.isnan(bias) | cp.isposinf(bias)).any()):  # one synchronisation, as the reference checks
        raise ValueError("bias must be finite or -inf (use -inf to exclude a key); got NaN or +inf")
    return cp.broadcast_to(bias.astype(cp.float32, copy=False), full)


def _slopes(slopes, b: int, h_q: int):
    checked = _checks.alibi_slopes(host(slopes), b, h_q)  # finite, (H_q,) or (B, H_q): read on the host
    return cp.asarray(np.ascontiguousarray(checked), dtype=cp.float32)


def _lens(name: str, lens, b: int, n: int):
    """Lengths checked on the host, sent to the device only where some is below ``n``."""
    if lens is None:
        return None
    checked = _checks.int_array(name, host(lens), shape=(b,), low=0, high=n)
    return None if (checked == n).all() else cp.asarray(checked, dtype=cp.int32)


def device_lens(name: str, lens, b: int, n: int):
    """``decode``'s ``cache_lens``: a CuPy integer array is trusted as it is (the kernel clips it to
    ``[0, N_max]``: nothing outside the cache is read) and never synchronised on; anything else is
    checked on the host."""
    if isinstance(lens, cp.ndarray):
        if lens.shape != (b,) or lens.dtype.kind not in "iu":
            raise ValueError(
                f"{name} must be an integer array of shape (B,) = ({b},); got {lens.dtype} of shape {lens.shape}"
            )
        return lens.astype(cp.int32, copy=False)
    return cp.asarray(_checks.int_array(name, np.asarray(lens), shape=(b,), low=0, high=n), dtype=cp.int32)


def strides(x, ndim: int | None = None) -> list[np.int64]:
    """Strides in elements (CuPy's are in bytes), as the kernels' ``long long`` arguments."""
    if x is None:
        return [np.int64(0)] * (ndim or 0)
    return [np.int64(s // x.itemsize) for s in x.strides]


def aligned(*arrays) -> bool:
    """16-byte aligned rows: base pointers and every stride but the last a multiple of 16 bytes."""
    return all(
        x.data.ptr % 16 == 0 and all(s % 16 == 0 for s in x.strides[:-1]) and (x.shape[-1] * x.itemsize) % 16 == 0
        for x in arrays
    )
