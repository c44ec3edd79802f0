"""One benchmark session: the backends it times, the inputs it shares between roles, the records.

A record is one timed (case, role): the shared timer's median, rounds, first-call latency and peak
memory, the rate (TFLOP/s, or for decode GB/s and the fraction of the copy rate measured in the
same session) and the ratio to the ``sdpa-default`` role of the same case in the same session.
Records go into pytest-benchmark's ``extra_info`` (so into ``--benchmark-json``) and, as each item
ends, into the ``--bench-log`` file (one JSON object a line), which is what a cut-off run keeps.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from pathlib import Path

import numpy as np

from attnspec import Backend, Unsupported, load_backend
from attnspec.conformance import timing
from benchmarks import calls
from benchmarks.cases import Case, work

BASELINE = "sdpa-default"
HELPERS = {BASELINE: "torch-sdpa", "floor": "torch-sdpa"}  # role -> backend (floor: its inputs); others name theirs


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


class Session:
    def __init__(self, spec: str, backend, log: Path | None = None, rounds: int | None = None):
        self.spec, self.backend, self.device = spec, backend, backend.device
        self.environment = dict(timing.environment(self.device), copy_rate_GBps=copy_rate_gbps(self.device))
        self.id = f"{self.environment['date']}-{os.getpid()}"
        self.log, self.rounds = log, rounds
        self._helpers: dict[str, object] = {}
        self._data: dict[tuple, dict] = {}
        self.baseline_ms: dict[str, float] = {}
        self.write(
            {
                "session": self.id,
                "spec": spec,
                "backend": backend.name,
                "environment": self.environment,
                "backend_info": backend_info(backend),
            }
        )

    def write(self, line: dict) -> None:
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps(line, default=str) + "\n")

    def backend_for(self, role: str):
        if role == "backend":
            return self.backend
        if role not in self._helpers:
            self._helpers[role] = load_backend(HELPERS.get(role, role), device=self.device)
        return self._helpers[role]

    def data(self, case: Case, backend, seed: int) -> dict:
        """The case's inputs in ``backend``'s arrays; every role of a case reads the same draw."""
        family = type(backend.to_native(np.zeros(1, np.float32))).__module__.partition(".")[0]
        key = (case.id, family)
        if key not in self._data:
            self._data = {k: v for k, v in self._data.items() if k[0] == case.id}  # one case's inputs at a time
            self._data[key] = calls.inputs(case, backend, seed)
        return self._data[key]

    def run(self, case: Case, role: str, seed: int, runner=None) -> dict:
        record = {"session": self.id, "case": case.id, **_fields(case), "role": role}
        try:
            backend = self.backend_for(role)
            record["backend"] = "floor" if role == "floor" else backend.name
            data = self.data(case, backend, seed)
            fn = calls.call(case, role, backend, data)
            record.update(
                timing.measure(
                    fn, self.device, runner=runner, rounds=self.rounds, peak_memory=peak_counter(backend, data["q"])
                )
            )
        except Unsupported as exc:
            record["declined"] = str(exc)
        except Exception as exc:  # an error (OOM, a compile failure) is the row's result; the run goes on
            record["error"] = first_line(exc)
        finally:
            gc.collect()
            if timing.is_cuda(self.device):
                import torch

                torch.cuda.empty_cache()
        self.derive(case, record)
        self.write(record)
        return record

    def derive(self, case: Case, record: dict) -> None:
        if not record.get("ms"):
            return
        if record["role"] == BASELINE:
            self.baseline_ms[case.id] = record["ms"]
        add_rates(case, record, self.environment["copy_rate_GBps"], self.baseline_ms.get(case.id))


def peak_counter(backend, array):
    """The backend's own peak-memory counter; for one without (``torch-sdpa``, the floor) on CUDA,
    PyTorch's allocator counter, as the torch-side backends use (on the CPU: none, not measured)."""
    if type(backend).peak_memory is not Backend.peak_memory:
        return backend.peak_memory
    if type(array).__module__.startswith("torch") and array.device.type == "cuda":
        from attnspec.backends import _torch_arrays

        return lambda fn: _torch_arrays.peak_memory(fn, str(array.device))
    return None


def add_rates(case: Case, record: dict, copy_rate_gbps: float | None, baseline_ms: float | None) -> None:
    """TFLOP/s, or GB/s and the fraction of the copy rate; the ratio to the baseline's time."""
    unit, amount = work(case, record["role"], np.dtype(calls.NUMPY_DTYPES[case.dtype]).itemsize)
    if unit == "flops":
        record["tflops"] = amount / record["ms"] / 1e9
    else:
        record["GBps"] = amount / record["ms"] / 1e6
        record["frac_copy"] = record["GBps"] / copy_rate_gbps if copy_rate_gbps else None
    record["ratio_vs_sdpa"] = baseline_ms / record["ms"] if baseline_ms else None


def _fields(case: Case) -> dict:
    fields = dataclasses.asdict(case)
    fields.pop("only")
    return fields


def backend_info(backend) -> dict:
    """What a reader needs to know about the backend that ran (its key tile, where it has one)."""
    info = {"name": backend.name, "type": f"{type(backend).__module__}.{type(backend).__name__}"}
    if getattr(backend, "block_k", None):
        info["block_k"] = backend.block_k
    return info


def copy_rate_gbps(device: str) -> float:
    """Device-to-device copy (1 GiB on CUDA, 64 MiB on the CPU), bytes read plus bytes written."""
    if timing.is_cuda(device):
        import torch

        src = torch.empty(2**30, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731
    else:
        src = np.ones(2**26, np.uint8)
        dst = np.empty_like(src)
        fn = lambda: np.copyto(dst, src)  # noqa: E731
    ms = timing.measure(fn, device)["ms"]
    return 2 * src.nbytes / ms / 1e6
