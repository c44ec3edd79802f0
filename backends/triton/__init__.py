"""``triton``: fused attention kernels in Triton, on CUDA, and on the CPU through Triton's interpreter.

Kernels (one module each): :mod:`.attention` (the forward pass of every ``sdpa`` option, split-KV
partials and packed-GQA decode in one kernel), :mod:`.merge` (the LSE merge), :mod:`.block_sparse`
(only a layout's active key blocks), :mod:`.backward` (the FlashAttention-2 backward: ``D``, dK/dV
per key block, dQ per query block). :mod:`.launch` and :mod:`.launch_backward` check arguments and
launch them; :mod:`.configs` holds the tile table.

On ``--device=cpu`` the backend sets ``TRITON_INTERPRET=1`` before the kernels are defined, so the
very kernels the GPU compiles run, slowly, in NumPy; its name in reports is then
``triton:interpreter``. One process runs Triton one way: asking for the other device once Triton
is imported is an error that says what to set (start a new process).

Products of float32 inputs are IEEE float32 (no TF32); 16-bit inputs are multiplied on tensor
cores with float32 accumulation, and the probabilities are rounded to the value dtype before
``P @ V``, as FlashAttention does. float64 is not declared.
"""

from __future__ import annotations

import torch

from attnspec import validation as _checks
from attnspec.backends import FLASH_CONTIGUOUS_CLAUSES, SDPA_FORWARD_CLAUSES, decline_unsupported, kernel_tile
from attnspec.backends import _torch_arrays as arrays
from attnspec.backends._triton_mode import select_mode
from attnspec.backends.torch_tiled import BlockSparseLayouts
from attnspec.backends.torch_tiled import backward as torch_backward
from attnspec.backends.torch_tiled import kernel as torch_kernel
from attnspec.contract import Backend, BackendError
from attnspec.reference import sparse as reference_sparse
from attnspec.reference.flash import check_decode_options

#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"triton": "TritonBackend"}


class TritonBackend(BlockSparseLayouts, Backend):
    name = "triton"
    clauses: tuple[str, ...] = SDPA_FORWARD_CLAUSES + FLASH_CONTIGUOUS_CLAUSES
    clauses += ("sparse", "sparse.mask", "sparse.block_sparse", "sparse.cost")
    clauses += ("sdpa.grad", "sdpa.grad.*")
    dtypes = ("float32", "float16", "bfloat16")
    devices = ("cuda", "cpu")
    max_head_dim = 256

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant is not None:
            raise BackendError(f"the triton backend has no variants; got {variant!r}")
        interpret = not self.device.startswith("cuda")
        select_mode(interpret, "triton")
        if interpret:
            # The interpreter pays NumPy calls per tile: the suite draws shorter sequences and narrower
            # heads there (still several 32 x 32 tiles and every head-dim tile width up to 64).
            self.name, self.max_seq_len, self.max_head_dim = "triton:interpreter", 96, 64
        from . import launch, launch_backward

        self._launch, self._launch_backward = launch, launch_backward

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def peak_memory(self, fn):
        return arrays.peak_memory(fn, self.device)

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        out, lse = self._attend(q, k, v, options)
        return (out, lse) if return_lse else out

    def sdpa_backward(self, q, k, v, dout, **options):
        """The FlashAttention-2 backward (:mod:`.backward`): ``P`` recomputed from the forward's LSE,
        ``dK``/``dV`` per key block (summed over the GQA group in the program), ``dQ`` per query block;
        ``dbias`` (float32 tiles, summed over broadcast axes) returned in the bias's dtype."""
        problem = torch_kernel.prepare(q, k, v, **options)
        decline_unsupported(problem, self.max_head_dim)
        dout = torch_backward.checked_dout(dout, problem)
        bias = options.get("bias")
        grads = self._launch_backward.backward(
            problem, self._launch.host_lens(problem), dout, None if bias is None else tuple(bias.shape)
        )
        return grads if bias is None else (*grads[:3], grads[3].to(bias.dtype))

    def flash_forward(self, q, k, v, *, block_q, block_k, **options):
        """The kernel with ``BLOCK_M``/``BLOCK_N`` the powers of two from 16 to 128 nearest above
        ``block_q``/``block_k`` (a tensor-core tile has at least 16 rows and columns)."""
        tile = (
            kernel_tile(_checks.integer("block_q", block_q, low=1)),
            kernel_tile(_checks.integer("block_k", block_k, low=1)),
        )
        return self._attend(q, k, v, options, tile=tile)

    def split_kv(self, q, k, v, *, num_splits, **options):
        return self._attend(q, k, v, options, num_splits=_checks.integer("num_splits", num_splits, low=1))

    def merge_partials(self, outs, lses):
        if outs.dim() != 5 or lses.shape != outs.shape[:4] or outs.shape[0] < 1:
            raise ValueError(
                f"outs must be (S, B, H, N, D_v) with S >= 1 and lses (S, B, H, N); "
                f"got {tuple(outs.shape)} and {tuple(lses.shape)}"
            )
        if torch.isnan(lses).any() or torch.isposinf(lses).any():
            raise ValueError("lses must be finite or -inf")
        return self._launch.merge(outs, lses.float(), outs.dtype)

    def decode(self, q, k_cache, v_cache, *, cache_lens, num_splits=1, **options):
        """Packed-GQA flash-decoding. ``cache_lens`` is read on the device, with no host
        synchronisation: given on the host it is checked like every length; given on the device it
        is trusted, clipped to ``[0, N_max]`` by the kernel so that nothing outside the cache is read."""
        check_decode_options(options)
        problem = torch_kernel.prepare(
            q, k_cache, v_cache, causal="bottom_right", names=("q", "k_cache", "v_cache"), **options
        )
        decline_unsupported(problem, self.max_head_dim)
        lens = self._launch.Lens(None, self._cache_lens(cache_lens, q.shape[0], k_cache.shape[2]))
        splits = _checks.integer("num_splits", num_splits, low=1)
        return self._launch.attention(problem, lens, num_splits=splits, pack_gqa=True)

    def sparse(self, q, k, v, *, pattern, scale=None, return_lse=False, **params):
        problem = torch_kernel.prepare(q, k, v, scale=scale)
        decline_unsupported(problem, self.max_head_dim)
        pat = self.block_sparse_pattern(pattern, q.shape[2], k.shape[2], params)
        reference_sparse._check_extents(pat, q.shape[0], q.shape[1])
        out, lse = self._launch.block_sparse(
            problem, pat.params["layout"], pat.params["block_q"], pat.params["block_k"]
        )
        return (out, lse) if return_lse else out

    def _attend(self, q, k, v, options, **launch):
        problem = torch_kernel.prepare(q, k, v, **options)
        decline_unsupported(problem, self.max_head_dim)
        return self._launch.attention(problem, self._launch.host_lens(problem), **launch)

    def _cache_lens(self, cache_lens, batch: int, capacity: int) -> torch.Tensor:
        if not torch.is_tensor(cache_lens) or not cache_lens.is_cuda:
            host = cache_lens.numpy() if torch.is_tensor(cache_lens) else cache_lens
            cache_lens = torch.as_tensor(_checks.int_array("cache_lens", host, shape=(batch,), low=0, high=capacity))
        elif cache_lens.shape != (batch,) or cache_lens.dtype.is_floating_point:
            raise ValueError(
                f"cache_lens must be an integer array of shape (B,) = ({batch},); "
                f"got {cache_lens.dtype} of shape {tuple(cache_lens.shape)}"
            )
        return cache_lens.to(self.device, torch.int32)
