"""``cupy``: FlashAttention in hand-written CUDA C++, compiled at run time by NVRTC through CuPy.

The plainest complete FlashAttention-2 forward pass that a kernel author can read beside the
spec: ``csrc/attention.cu`` (fp16 and bf16 on tensor cores: ``mma.sync.m16n8k16`` with
``ldmatrix`` operands, ``cp.async`` double buffering of K/V tiles, the online softmax in
registers, exp2 with the scale folded in), ``csrc/attention_f32.cu`` (float32 with IEEE float32
products on the CUDA cores: no TF32), ``csrc/merge.cu`` (``flash.merge``), and the visibility
rules and score modifiers written once in ``csrc/common.cuh``. :mod:`.kernels` names the
instantiations and tiles (no GPU needed: CI compiles them), :mod:`.problem` checks arguments,
:mod:`.launch` compiles and launches.

Arrays are ``cupy.ndarray`` on the current device; ``to_native`` takes NumPy arrays. bfloat16
crosses as ``ml_dtypes.bfloat16``: NumPy's bytes are copied to the device unchanged and viewed
there with CuPy's bfloat16 dtype (CuPy >= 14), so no value is rounded on the way in or out.
Every call runs on CuPy's current stream; float64 is not declared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from attnspec import validation as _checks
from attnspec.backends import FLASH_CONTIGUOUS_CLAUSES, SDPA_FORWARD_CLAUSES, decline_unsupported, kernel_tile
from attnspec.contract import Backend, BackendError
from attnspec.reference.flash import check_decode_options

try:
    import cupy as cp
except ImportError:  # declined with a message that says what to install
    cp = None

_BF16 = np.dtype(ml_dtypes.bfloat16)


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"cupy": "CupyBackend"}


class CupyBackend(Backend):
    name = "cupy"
    clauses = SDPA_FORWARD_CLAUSES + FLASH_CONTIGUOUS_CLAUSES
    dtypes = ("float32", "float16", "bfloat16")
    devices = ("cuda",)
    max_head_dim = 256

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(device or "cuda")
        if variant is not None:
            raise BackendError(f"the cupy backend has no variants; got {variant!r}")
        if cp is None:
            raise BackendError("the cupy backend needs CuPy and a CUDA GPU: pip install 'attnspec[cupy]'")
        if cp.cuda.runtime.getDeviceCount() == 0:
            raise BackendError("the cupy backend needs a CUDA GPU; CuPy sees none")
        from . import launch, problem

        self._launch, self._problem = launch, problem

    def to_native(self, array):
        if array.dtype == _BF16:
            return cp.asarray(np.ascontiguousarray(array).view(np.uint16)).view(_BF16)
        return cp.asarray(array)

    def to_numpy(self, value):
        if isinstance(value, cp.ndarray):
            if value.dtype == _BF16:
                return cp.asnumpy(value.view(cp.uint16)).view(_BF16)
            return cp.asnumpy(value)
        return np.asarray(value)

    def peak_memory(self, fn: Callable[[], Any]) -> tuple[Any, int | None]:
        """``(result, peak bytes)`` allocated while ``fn`` runs, counted by an allocator that wraps
        ``cudaMalloc`` for the call (CuPy's pool keeps no peak)."""
        live: dict[int, int] = {}
        count = {"now": 0, "peak": 0}

        def malloc(size, device_id):
            ptr = cp.cuda.runtime.malloc(size)
            live[ptr] = size
            count["now"] += size
            count["peak"] = max(count["peak"], count["now"])
            return ptr

        def free(ptr, device_id):
            cp.cuda.runtime.free(ptr)
            count["now"] -= live.pop(ptr, 0)

        allocator = cp.cuda.memory.PythonFunctionAllocator(malloc, free)
        cp.cuda.Device().synchronize()
        with cp.cuda.using_allocator(allocator.malloc):
            result = fn()
            cp.cuda.Device().synchronize()
        return result, count["peak"]

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        out, lse = self._attend(q, k, v, options)
        return (out, lse) if return_lse else out

    def flash_forward(self, q, k, v, *, block_q, block_k, **options):
        """The 16-bit kernel with ``BM x BN`` the powers of two from 16 nearest above ``block_q`` /
        ``block_k``, within the tile table's largest (:func:`.kernels.tile`); float32's kernel has
        one tile."""
        bm = kernel_tile(_checks.integer("block_q", block_q, low=1))
        bn = kernel_tile(_checks.integer("block_k", block_k, low=1))
        return self._attend(q, k, v, options, block=(bm, bn))

    def split_kv(self, q, k, v, *, num_splits, **options):
        return self._attend(q, k, v, options, num_splits=_checks.integer("num_splits", num_splits, low=1))

    def merge_partials(self, outs, lses):
        for name, x in (("outs", outs), ("lses", lses)):
            self._problem.device_array(name, x)
        _checks.partials(outs, lses)
        if bool((cp.isnan(lses) | cp.isposinf(lses)).any()):
            raise ValueError("lses must be finite or -inf")
        return self._launch.merge(outs, lses, outs.dtype)

    def decode(self, q, k_cache, v_cache, *, cache_lens, num_splits=1, **options):
        """Packed-GQA flash-decoding. ``cache_lens`` is read on the device, with no host
        synchronisation: given on the host it is checked like every length; given as a CuPy array
        it is trusted, clipped to ``[0, N_max]`` by the kernel so that nothing outside the cache is read."""
        check_decode_options(options)
        p = self._problem.prepare(
            q, k_cache, v_cache, causal="bottom_right", names=("q", "k_cache", "v_cache"), **options
        )
        decline_unsupported(p, self.max_head_dim)
        lens = self._problem.device_lens("cache_lens", cache_lens, q.shape[0], k_cache.shape[2])
        splits = _checks.integer("num_splits", num_splits, low=1)
        return self._launch.attention(p, num_splits=splits, pack_gqa=True, cache_lens=lens)

    def _attend(self, q, k, v, options, **launch):
        p = self._problem.prepare(q, k, v, **options)
        decline_unsupported(p, self.max_head_dim)
        return self._launch.attention(p, **launch)
