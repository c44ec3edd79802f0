"""One timer, shared by the benchmark (``benchmarks/``), the profiler and the scaling report.

:func:`measure` times a call the same way everywhere:

- the **first call** on the host clock, the device synchronised on both sides, reported apart as
  "first-call compile+tune latency" (compilation and autotuning land there);
- the **peak memory** of a second call, by the backend's own counter
  (:meth:`attnspec.Backend.peak_memory`) when one is given;
- then warm-up rounds and timed rounds, and the **median** of the timed rounds (never the mean:
  one preempted round moves a mean, not a median). On CUDA a round is the device time between
  two CUDA events around the call, after an L2 flush (a 256 MiB buffer is written, so the inputs
  come from device memory as they would in a model); on the CPU it is the host clock.

The rounds are run through pytest-benchmark's ``pedantic`` protocol: in the benchmark by
pytest-benchmark itself (its ``--benchmark-json`` then holds exactly these rounds), elsewhere by
:class:`Rounds`. :func:`environment` captures what a result needs to be read later: device,
versions (torch, triton, CUDA, driver), date.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

MIB = 2**20
L2_FLUSH_BYTES = 256 * MIB  # above the L2 of current GPUs (H100: 50 MiB), as triton's do_bench
BUDGET_MS = 100.0  # timed rounds: about this much device time, within [MIN_ROUNDS, MAX_ROUNDS]
WARMUP_MS = 25.0
MIN_ROUNDS, MAX_ROUNDS = 10, 1000


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def host_clock() -> float:
    return time.perf_counter()


class _Mark:
    """A reading of :func:`cuda_clock`: a CUDA event recorded on the current stream."""

    def __init__(self):
        import torch

        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record()

    def __sub__(self, earlier: _Mark) -> float:
        self.event.synchronize()
        return earlier.event.elapsed_time(self.event) / 1e3  # seconds, as the host clock


def cuda_clock() -> _Mark:
    """The clock of CUDA rounds: ``end - start`` of two readings is the device time between them,
    in seconds. pytest-benchmark takes it as its timer (``end - start`` around the call), so no
    host synchronisation falls inside the timed span."""
    return _Mark()


def clock(device: str) -> Callable[[], Any]:
    return cuda_clock if is_cuda(device) else host_clock


def sync(device: str) -> None:
    if is_cuda(device):
        import torch

        torch.cuda.synchronize()


def l2_flush(device: str) -> Callable[[], None] | None:
    """A round's setup on CUDA: write a buffer larger than L2, evicting the inputs. None on the CPU."""
    if not is_cuda(device):
        return None
    import torch

    buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)

    def flush() -> None:  # returns nothing: pytest-benchmark takes a setup's result as the call's arguments
        buffer.zero_()

    return flush


def wall_ms(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """One call on the host clock, the device synchronised on both sides: ``(ms, result)``."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3, out


class Rounds:
    """pytest-benchmark's ``pedantic(target, setup=, rounds=, warmup_rounds=)`` without pytest:
    ``seconds`` holds the timed rounds."""

    def __init__(self, device: str):
        self.clock = clock(device)
        self.seconds: list[float] = []

    def pedantic(self, target, setup=None, rounds=1, warmup_rounds=0):
        for index in range(warmup_rounds + rounds):
            if setup is not None:
                setup()
            start = self.clock()
            target()
            end = self.clock()
            if index >= warmup_rounds:
                self.seconds.append(end - start)


def rounds_for(estimate_ms: float) -> tuple[int, int]:
    """(timed rounds, warm-up rounds) for a call of about ``estimate_ms``."""
    per = max(estimate_ms, 1e-3)
    return (min(MAX_ROUNDS, max(MIN_ROUNDS, round(BUDGET_MS / per))), min(100, max(1, round(WARMUP_MS / per))))


def measure(
    fn: Callable[[], Any],
    device: str,
    *,
    runner=None,
    peak_memory=None,
    rounds: int | None = None,
    warmup_rounds: int | None = None,
) -> dict:
    """First call, peak memory of a second call, then the median of timed rounds (module docstring).

    ``runner``: pytest-benchmark's fixture (or anything with its ``pedantic``; its rounds are read
    back from ``runner.stats``), default :class:`Rounds`. ``peak_memory``: a backend's
    ``peak_memory``; without one the peak is not measured. ``rounds``/``warmup_rounds`` fix the
    counts; by default they follow the second call's time (:func:`rounds_for`).
    """
    first_ms, _ = wall_ms(fn, device)
    if peak_memory is not None:
        second_ms, (_, peak) = wall_ms(lambda: peak_memory(fn), device)
    else:
        second_ms, peak = wall_ms(fn, device)[0], None
    auto_rounds, auto_warmup = rounds_for(second_ms)
    runner = runner if runner is not None else Rounds(device)
    runner.pedantic(
        fn,
        setup=l2_flush(device),
        rounds=rounds or auto_rounds,
        warmup_rounds=auto_warmup if warmup_rounds is None else warmup_rounds,
    )
    seconds = _seconds(runner)
    return {
        "ms": statistics.median(seconds) * 1e3 if seconds else None,
        "rounds": len(seconds),
        "first_call_ms": first_ms,
        "peak_bytes": peak,
        "timer": timer_name(device),
    }


def _seconds(runner) -> list[float]:
    if isinstance(runner, Rounds):
        return runner.seconds
    stats = getattr(runner, "stats", None)  # pytest-benchmark: None when --benchmark-disable'd
    return list(stats.stats.data) if stats is not None else []


def timer_name(device: str) -> str:
    return "CUDA events, L2 flushed, median" if is_cuda(device) else "host clock, median"


def environment(device: str) -> dict:
    """Device, package versions, driver and date: what a committed result is read against."""
    env: dict[str, str | None] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(device),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "timer": timer_name(device),
    }
    for package in ("attnspec", "numpy", "torch", "triton", "cupy"):
        env[package] = _version(package)
    if env["torch"]:
        import torch

        env["cuda"] = torch.version.cuda
    env["driver"] = _driver() if is_cuda(device) else None
    return env


def _version(package: str) -> str | None:
    names = {"cupy": ("cupy", "cupy-cuda13x", "cupy-cuda12x")}.get(package, (package,))
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _device_name(device: str) -> str:
    if not is_cuda(device):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
