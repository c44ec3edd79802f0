"""``torch-ring`` and ``torch-ulysses``: context-parallel attention (clauses ``cp.*``) over a
``torch.distributed`` process group, gloo on the CPU and NCCL on CUDA, one process per rank.

The suite stays one process. A backend instance starts its pool of ``W`` worker processes once, on
its first call (``torch-ring:W``; default 4 on the CPU, every GPU on CUDA), with a process group
over them and one subgroup per world size ``P <= W``; it is torn down when the backend is
collected or the interpreter exits. A call is checked in the calling process (an error never
reaches a rank), its shard ``r`` is sent to worker ``r``, the workers run the scheme with
PyTorch's own collectives, and the shards of the result come back:

- ``torch-ring`` (``cp.ring``): ``P`` steps; at each the K/V shard held is sent to rank ``r + 1``
  and the next received from ``r - 1`` by ``batch_isend_irecv``, posted before the step's compute
  so that the exchange overlaps it; the partial of the step is the tiled ``torch`` kernel's
  (:func:`attnspec.backends.torch_tiled.kernel.forward`, ``(out, lse)``) over the (query run, key
  run) pairs that hold a visible key (``cp.causal.pairs``: whole runs unmasked, a diagonal with a
  local causal mask, the rest skipped), merged into the running result by
  :func:`~attnspec.backends.torch_tiled.kernel.merge`.
- ``torch-ulysses`` (``cp.ulysses``): ``all_to_all`` from sequence shards to head groups over the
  whole sequence, the tiled kernel per rank, ``all_to_all`` back.

A worker that dies or gives no result within :attr:`TorchRing.timeout` seconds makes the call
fail with an error naming the rank; the pool is torn down and the next call starts a new one.
Device-generic: on CUDA worker ``r`` uses ``cuda:r`` and NCCL; nothing else changes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from attnspec import validation as check
from attnspec.contract import Backend, BackendError, Unsupported
from attnspec.reference import cp as reference_cp

#: Ranks started on the CPU when the variant names none.
DEFAULT_CPU_WORLD = 4


def _distributed(device_type: str) -> str:
    """The ``torch.distributed`` backend for ``device_type``; BackendError saying what is missing."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - torch is this module's requirement
        raise BackendError(f"torch-ring/torch-ulysses need PyTorch: {exc}") from None
    if not dist.is_available():
        raise BackendError("this PyTorch build has no torch.distributed (torch.distributed.is_available() is False)")
    if device_type == "cuda":
        if not dist.is_nccl_available():
            raise BackendError("device 'cuda' needs the NCCL backend of torch.distributed, which this build lacks")
        if not torch.cuda.is_available():
            raise BackendError("device 'cuda' was asked for but torch.cuda.is_available() is False")
        return "nccl"
    if not dist.is_gloo_available():
        raise BackendError("device 'cpu' needs the gloo backend of torch.distributed, which this build lacks")
    return "gloo"


# --- the worker side ------------------------------------------------------------------------------


def _worker(rank: int, size: int, store: str, device_type: str, conn) -> None:
    """One rank: join the group, build a subgroup per world size, run tasks until ``None``."""
    import torch
    import torch.distributed as dist

    try:
        if device_type == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
            device = torch.device("cpu")
        dist.init_process_group(_distributed(device_type), init_method=f"file://{store}", rank=rank, world_size=size)
        groups = {p: dist.new_group(list(range(p))) for p in range(1, size + 1)}
        conn.send(("ready", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the caller is gone
            break
        if task is None:
            break
        try:
            run = _runner(task["runner"])
            conn.send(("ok", run(task, rank, groups[task["world_size"]], device)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def _runner(target: str):
    """The function a task names as ``module:function`` (each backend brings its own scheme)."""
    import importlib

    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _main(argv: list[str]) -> None:
    """``python -m attnspec.backends.torch_cp HOST PORT RANK SIZE STORE DEVICE_TYPE`` (the key on stdin)."""
    from multiprocessing.connection import Client

    host, port, rank, size, store, device_type = argv
    conn = Client((host, int(port)), authkey=bytes.fromhex(sys.stdin.readline().strip()))
    conn.send(int(rank))
    _worker(int(rank), int(size), store, device_type, conn)


def _local_lens(pos: np.ndarray, seq_lens: np.ndarray) -> np.ndarray:
    """Per batch item, how many of ``pos`` (increasing) are valid: the valid tokens are a prefix."""
    return (pos[None, :] < seq_lens[:, None]).sum(axis=1)


def runs(layout: str, shard_len: int) -> list[tuple[int, int]]:
    """A shard's runs of consecutive positions, as local index ranges: one, or zigzag's two chunks."""
    if layout == "zigzag" and shard_len:
        return [(0, shard_len // 2), (shard_len // 2, shard_len)]
    return [(0, shard_len)]


def plan(q_pos: np.ndarray, k_pos: np.ndarray, shard_runs: list[tuple[int, int]], causal: bool, own: bool):
    """Clause ``cp.causal.pairs``: the kernel calls of one ring step, ``[((q0, q1), (k0, k1), diagonal)]``.

    ``own``: the held K/V shard is the rank's own; causal within it is the local causal mask
    (positions increase along a shard). Otherwise a (query run, key run) pair is whole when every
    key precedes every query, skipped when every key follows, and query runs that need the same
    key runs share one call.
    """
    c = len(q_pos)
    if c == 0:
        return []
    if own:
        return [((0, c), (0, c), causal)]
    calls: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for qa, qb in shard_runs:
        needed = []
        for ka, kb in shard_runs:
            if not causal or k_pos[kb - 1] <= q_pos[qa]:
                needed.append((ka, kb))
            elif k_pos[ka] <= q_pos[qb - 1]:
                raise AssertionError(f"runs at {q_pos[qa:qb]} and {k_pos[ka:kb]} overlap: not a layout's runs")
        if needed:
            keys = (needed[0][0], needed[-1][1])  # the needed runs are adjacent (one or both of two)
            calls.setdefault(keys, []).append((qa, qb))
    out = []
    for keys, q_runs in calls.items():
        if q_runs[-1][1] - q_runs[0][0] == sum(b - a for a, b in q_runs):  # adjacent: one call
            out.append(((q_runs[0][0], q_runs[-1][1]), keys, False))
        else:
            out.extend((r, keys, False) for r in q_runs)
    return out


def _tensors(task, device):
    from attnspec.backends import _torch_arrays as arrays

    return [arrays.to_torch(task[name], str(device)) for name in ("q", "k", "v")]


def _attend(q, k, v, scale: float, causal: bool, q_lens, kv_lens):
    """``(out, lse)`` of the tiled kernel, out in its accumulator dtype."""
    from attnspec.backends.torch_tiled import kernel

    problem = kernel.prepare(
        q, k, v, scale=scale, causal="top_left" if causal else None, q_lens=q_lens, kv_lens=kv_lens
    )
    return kernel.forward(problem, block_k=2048 if q.is_cuda else 128)


def _ring(task, rank: int, group, device):
    """Clause ``cp.ring`` on this rank: ``(out, lse)`` of its shard as NumPy arrays."""
    import torch
    import torch.distributed as dist

    from attnspec.backends import _torch_arrays as arrays
    from attnspec.backends.torch_tiled import kernel

    p, pos, lens, causal = task["world_size"], task["positions"], task["seq_lens"], task["causal"]
    q, k, v = _tensors(task, device)
    b, h_q, c, _ = q.shape
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros((b, h_q, c, v.shape[-1]), dtype=acc_dtype, device=device)
    lse = torch.full((b, h_q, c), -torch.inf, dtype=acc_dtype, device=device)
    shard_runs = runs(task["layout"], c)
    for step in range(p):
        owner = (rank - step) % p
        pending = []
        if step < p - 1:  # post the exchange of the next K/V shard before computing with this one
            k_next, v_next = torch.empty_like(k), torch.empty_like(v)
            send_to, receive_from = (rank + 1) % p, (rank - 1) % p
            pending = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, k, send_to, group, tag=2 * step),
                    dist.P2POp(dist.isend, v, send_to, group, tag=2 * step + 1),
                    dist.P2POp(dist.irecv, k_next, receive_from, group, tag=2 * step),
                    dist.P2POp(dist.irecv, v_next, receive_from, group, tag=2 * step + 1),
                ]
            )
        for (q0, q1), (k0, k1), diagonal in plan(pos[rank], pos[owner], shard_runs, causal, owner == rank):
            part_out, part_lse = _attend(
                q[:, :, q0:q1],
                k[:, :, k0:k1],
                v[:, :, k0:k1],
                task["scale"],
                diagonal,
                _local_lens(pos[rank][q0:q1], lens),
                _local_lens(pos[owner][k0:k1], lens),
            )
            merged = kernel.merge(
                torch.stack([out[:, :, q0:q1], part_out]), torch.stack([lse[:, :, q0:q1], part_lse.to(acc_dtype)])
            )
            out[:, :, q0:q1], lse[:, :, q0:q1] = merged
        for request in pending:
            request.wait()
        if pending:
            k, v = k_next, v_next
    return arrays.to_numpy(out.to(q.dtype)), arrays.to_numpy(lse)


def _ulysses(task, rank: int, group, device):
    """Clause ``cp.ulysses`` on this rank: all-to-all to whole GQA groups, attention, all-to-all back."""
    import torch
    import torch.distributed as dist

    from attnspec.backends import _torch_arrays as arrays

    p, pos = task["world_size"], task["positions"]
    q, k, v = _tensors(task, device)
    where = torch.as_tensor(pos, device=device)

    def to_heads(x):  # (B, H, C, D) shard -> (B, H / P, N, D): my heads over the whole sequence
        received = [torch.empty_like(part) for part in x.chunk(p, dim=1)]
        dist.all_to_all(received, [part.contiguous() for part in x.chunk(p, dim=1)], group=group)
        full = torch.empty(x.shape[0], x.shape[1] // p, p * x.shape[2], x.shape[3], dtype=x.dtype, device=device)
        for r, part in enumerate(received):
            full[:, :, where[r]] = part
        return full

    def to_shards(x):  # (B, H / P, N, ...) -> (B, H, C, ...): every rank's heads of my shard
        parts = [x[:, :, where[r]].contiguous() for r in range(p)]
        received = [torch.empty_like(parts[rank]) for _ in range(p)]
        dist.all_to_all(received, parts, group=group)
        return torch.cat(received, dim=1)

    full_out, full_lse = _attend(
        to_heads(q), to_heads(k), to_heads(v), task["scale"], task["causal"], task["seq_lens"], task["seq_lens"]
    )
    out = to_shards(full_out.to(q.dtype))
    lse = to_shards(full_lse[..., None])[..., 0]
    return arrays.to_numpy(out), arrays.to_numpy(lse)


# --- the calling side -----------------------------------------------------------------------------


class _Pool:
    """``size`` worker processes in one process group; :meth:`run` sends one task per rank.

    Workers are plain ``python -m attnspec.backends.torch_cp`` processes connected back over a
    local socket with a random key: nothing of the caller's ``__main__`` is re-imported (a script
    without a ``__main__`` guard works, unlike with multiprocessing's spawn).
    """

    def __init__(self, size: int, device_type: str, label: str, timeout: float):
        from multiprocessing.connection import Listener

        self.size, self.label = size, label
        self.tmp = tempfile.mkdtemp(prefix="attnspec-cp-")
        key = secrets.token_bytes(32)
        self.processes: list[subprocess.Popen] = []
        self.conns: list = [None] * size
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            host, port = listener.address
            store = os.path.join(self.tmp, "store")
            try:
                for r in range(size):
                    args = [sys.executable, "-m", __name__, host, str(port), str(r), str(size), store, device_type]
                    process = subprocess.Popen(args, stdin=subprocess.PIPE, text=True)
                    assert process.stdin is not None
                    process.stdin.write(key.hex() + "\n")
                    process.stdin.close()
                    self.processes.append(process)
                listener._listener._socket.settimeout(max(timeout, 300.0))  # type: ignore[attr-defined]
                for _ in range(size):
                    conn = listener.accept()
                    self.conns[conn.recv()] = conn
                self._collect("ready", range(size), max(timeout, 300.0), "start")
            except BaseException as exc:
                self.close()
                if isinstance(exc, OSError):
                    raise RuntimeError(
                        f"{label}: the workers did not connect within {max(timeout, 300.0):g} s: {exc}"
                    ) from exc
                raise

    def run(self, tasks: list[dict], timeout: float) -> list:
        try:
            for r, task in enumerate(tasks):
                self.conns[r].send(task)
            return self._collect("ok", range(len(tasks)), timeout, "call")
        except BaseException:
            self.close()
            raise

    def _collect(self, kind: str, ranks: range, timeout: float, what: str) -> list:
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(ranks):
            waiting = [r for r in ranks if r not in got]
            ready = wait([self.conns[r] for r in waiting], timeout=0.2)
            for r in waiting:
                if self.conns[r] not in ready:
                    continue
                try:
                    status, payload = self.conns[r].recv()
                except EOFError:
                    status, payload = "died", None
                if status == "error":
                    raise RuntimeError(f"{self.label}: worker rank {r} failed during the {what}:\n{payload}")
                if status == kind:
                    got[r] = payload
            dead = [(r, p.poll()) for r, p in enumerate(self.processes) if p.poll() is not None and r not in got]
            if dead:
                r, code = dead[0]
                raise RuntimeError(
                    f"{self.label}: worker rank {r} died (exit code {code}) during the {what}; "
                    "the process group is torn down, the next call starts a new one"
                )
            if time.monotonic() > deadline and len(got) < len(ranks):
                missing = sorted(set(ranks) - set(got))
                raise TimeoutError(
                    f"{self.label}: rank(s) {missing} gave no result within {timeout:g} s ({what}); "
                    "the process group is torn down, the next call starts a new one"
                )
        return [got[r] for r in ranks]

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.send(None)
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for conn in self.conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self.processes, self.conns = [], [None] * self.size
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def alive(self) -> bool:
        return bool(self.processes) and all(p.poll() is None for p in self.processes)


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"torch-ring": "TorchRing", "torch-ulysses": "TorchUlysses"}


class TorchRing(Backend):
    """Ring attention over ``W`` processes; the variant is ``W`` (``torch-ring:2``)."""

    name = "torch-ring"
    scheme = "ring"
    #: What each rank runs, as ``module:function(task, rank, group, device) -> (out, lse)``.
    runner = f"{__name__}:_ring"
    clauses: tuple[str, ...] = ("cp", "cp.layout.*", "cp.ring", "cp.causal.pairs", "cp.lengths", "cp.lse")
    dtypes: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
    devices = ("cpu", "cuda")
    #: Seconds a call waits for every rank's result before it fails (a hung or dead worker).
    timeout = 120.0

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(device)
        device_type = self.device.split(":")[0]
        _distributed(device_type)
        if variant is None:
            import torch

            size = torch.cuda.device_count() if device_type == "cuda" else DEFAULT_CPU_WORLD
        elif variant.isdigit() and int(variant) >= 1:
            size = int(variant)
        else:
            raise BackendError(
                f"{self.name}: the variant is the number of processes, e.g. {self.name}:2; got {variant!r}"
            )
        if variant is not None:
            self.name = f"{self.name}:{size}"
        if device_type == "cuda":
            import torch

            if size > torch.cuda.device_count():
                raise BackendError(
                    f"{self.name}: {size} processes need {size} GPUs; {torch.cuda.device_count()} visible"
                )
            self.dtypes = ("float32", "float16", "bfloat16")
        self.max_world_size = size
        self.device_type = device_type
        self._pool: _Pool | None = None
        self._finalizer: weakref.finalize | None = None

    def pool(self) -> _Pool:
        """The worker pool, started on first use (and again after a failure tore it down)."""
        if self._pool is None or not self._pool.alive:
            if self._finalizer is not None:
                self._finalizer()
            self._pool = _Pool(self.max_world_size, self.device_type, self.name, self.timeout)
            self._finalizer = weakref.finalize(self, self._pool.close)
        return self._pool

    def close(self) -> None:
        """Stop the workers now (they are stopped at exit otherwise)."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None

    def decline(self, q_shape: tuple, v_shape: tuple, seq_lens: np.ndarray) -> None:
        """Raise Unsupported for checked arguments this backend cannot run (these run everything)."""

    def context_parallel(self, q, k, v, *, layout="contiguous", scheme="ring", scale=None, causal=None, seq_lens=None):
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not isinstance(x, np.ndarray) or not check.is_real_float(x.dtype):
                raise TypeError(f"{name} must be a real floating-point NumPy array; got {getattr(x, 'dtype', type(x))}")
            if x.dtype.name not in self.dtypes:
                raise TypeError(f"{name} has dtype {x.dtype}, which {self.name} does not declare ({self.dtypes})")
        check.same_dtype(q=q, k=k, v=v)
        layout, scheme, scale, is_causal, lens = reference_cp.check_arguments(
            q, k, v, layout, scheme, scale, causal, seq_lens
        )
        if scheme != self.scheme:
            raise Unsupported(f"scheme {scheme!r}: {self.name} runs scheme {self.scheme!r}")
        p, b, h_q, c, _ = q.shape
        self.decline(q.shape, v.shape, lens)
        if p > self.max_world_size:
            raise Unsupported(f"P = {p} shards: {self.name} has {self.max_world_size} processes")
        lse_dtype = np.float64 if q.dtype == np.float64 else np.float32
        if c == 0 or b == 0 or h_q == 0:  # nothing to compute or send
            return np.zeros((p, b, h_q, c, v.shape[-1]), q.dtype), np.zeros((p, b, h_q, c), lse_dtype)
        pos = reference_cp.positions(layout, p, c)
        common = dict(
            runner=self.runner, world_size=p, layout=layout, scheme=scheme, scale=scale, causal=is_causal, seq_lens=lens
        )
        tasks = [dict(common, q=q[r], k=k[r], v=v[r], positions=pos) for r in range(p)]
        results = self.pool().run(tasks, self.timeout)
        return np.stack([o for o, _ in results]), np.stack([s for _, s in results]).astype(lse_dtype)


class TorchUlysses(TorchRing):
    """DeepSpeed-Ulysses over ``W`` processes; the variant is ``W`` (``torch-ulysses:2``)."""

    name = "torch-ulysses"
    scheme = "ulysses"
    runner = f"{__name__}:_ulysses"
    clauses = ("cp", "cp.layout.*", "cp.ulysses", "cp.lengths", "cp.lse")


if __name__ == "__main__":
    _main(sys.argv[1:])
