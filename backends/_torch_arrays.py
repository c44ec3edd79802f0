"""NumPy <-> PyTorch across the contract's array boundary, bfloat16 included.

NumPy has no bfloat16; ``ml_dtypes.bfloat16`` arrays share its bit layout, so they cross as
16-bit integers and are reinterpreted on the other side, without rounding.
"""

from __future__ import annotations

import gc

import ml_dtypes
import numpy as np
import torch

from attnspec import validation as _checks

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_BF16 = np.dtype(ml_dtypes.bfloat16)


def tensor(name: str, x) -> torch.Tensor:
    """``x`` if it is a floating-point tensor, else a TypeError naming ``name``.

    Arrays are not converted here: they reach a backend through its ``to_native``, which also puts
    them on its device; a silent conversion would hide a list or a host array passed by mistake.
    """
    if not torch.is_tensor(x):
        got = "None" if x is None else type(x).__name__
        raise TypeError(f"{name} must be a torch.Tensor (convert arrays with the backend's to_native); got {got}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    return x


def host(x) -> np.ndarray:
    """A host copy of a tensor, or ``x`` as an array: lengths and layouts are read on the host."""
    return to_numpy(x) if torch.is_tensor(x) else np.asarray(x)


stand_in = _checks.stand_in  # the shared shape checks' zero-stride stand-in


def to_torch(array: np.ndarray, device: str) -> torch.Tensor:
    if array.dtype == _BF16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).to(device)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def to_numpy(tensor) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor):
        return np.asarray(tensor)
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_BF16)
    return tensor.numpy()


def default_device(device: str | None) -> str:
    """The device asked for, else CUDA where there is one, else the CPU; CUDA must exist if asked for."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but torch.cuda.is_available() is False")
    return device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory(fn, device: str):
    """``(result, peak bytes)`` allocated while ``fn`` runs: the CUDA allocator's counter on a GPU,
    the profiler's allocation events on the CPU (tracemalloc does not see PyTorch's allocator).

    Garbage is collected first: a tensor left from earlier work and freed while ``fn`` runs would
    otherwise be subtracted from ``fn``'s own allocations and understate its peak."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return result, torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return result, peak
