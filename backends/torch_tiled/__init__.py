"""``torch``: the tiled flash algorithm in PyTorch operations, on ``cpu`` and ``cuda`` from one code.

The readable bridge between the NumPy reference and raw kernels: :mod:`.kernel` holds the
algorithm, :mod:`.steps` the elementwise work of a tile; this module adapts them to the backend
contract. Variants: ``torch:eager`` runs the steps as eager PyTorch operations (the default on the
CPU), ``torch:compiled`` through ``torch.compile`` (the default on CUDA, where Triton is present).
"""

from __future__ import annotations

import torch

from attnspec import validation as _checks
from attnspec.backends import SDPA_FORWARD_CLAUSES
from attnspec.backends import _torch_arrays as arrays
from attnspec.backends.torch_tiled import backward, family_backward, kernel, paged
from attnspec.backends.torch_tiled import linear as chunked_linear
from attnspec.backends.torch_tiled.steps import Steps
from attnspec.contract import Backend, BackendError, Unsupported
from attnspec.reference import sparse as reference_sparse
from attnspec.reference.flash import check_decode_options


class BlockSparseLayouts:
    """For a backend whose ``sparse`` runs block-sparse layouts only (``torch``, ``triton``): the
    pattern checked by the reference's own code, and ``sparse_mask`` as the layout's table."""

    name: str
    device: str

    def block_sparse_pattern(self, pattern, n_q, n_k, params):
        """The validated block-sparse pattern (host copies of its parameters), or ``Unsupported``."""
        if pattern != "block_sparse":
            raise Unsupported(f"pattern {pattern!r}: the {self.name} backend implements block_sparse only")
        host = {name: arrays.to_numpy(x) if torch.is_tensor(x) else x for name, x in params.items()}
        return reference_sparse.build("block_sparse", n_q, n_k, **host)  # the reference's argument checks

    def sparse_mask(self, pattern, n_q, n_k, **params):
        pat = self.block_sparse_pattern(pattern, n_q, n_k, params)
        layout = torch.as_tensor(pat.params["layout"], device=self.device)
        return kernel.layout_table(layout, pat.params["block_q"], pat.params["block_k"], n_q, n_k)[None]


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"torch": "TorchBackend"}


class TorchBackend(BlockSparseLayouts, Backend):
    name = "torch"
    clauses = SDPA_FORWARD_CLAUSES + ("sdpa.window.top_left",)  # the window aligned either way
    clauses += ("sdpa.grad", "sdpa.grad.*")
    clauses += ("flash.*", "sparse", "sparse.mask", "sparse.block_sparse", "sparse.cost")
    clauses += ("linear.grad", "retention.grad", "sparse.block_sparse.grad")
    clauses += (
        "linear.chunked",
        "linear.causal",
        "linear.feature_map",
        "linear.normalizer",
        "linear.state",
        "linear.cost",
    )
    dtypes = ("float64", "float32", "float16", "bfloat16")
    devices = ("cpu", "cuda")
    #: key tile for ``sdpa``; the query rows of a tile are all processed together
    block_k = 128

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant not in (None, "eager", "compiled"):
            raise BackendError(f"torch backend variant must be 'eager' or 'compiled'; got {variant!r}")
        compiled = variant == "compiled" or (variant is None and self.device.startswith("cuda") and _has_triton())
        self.steps = Steps(compiled)
        if compiled or variant:  # the report names what ran: torch:compiled, or torch:eager when asked for
            self.name = f"torch:{'compiled' if compiled else 'eager'}"
        if self.device.startswith("cuda"):
            self.block_k = 2048  # fewer, larger steps: per-tile passes over the state and launches dominate small tiles
            self.dtypes = ("float32", "float16", "bfloat16")  # float64 runs on CUDA, but slowly: not claimed

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def peak_memory(self, fn):
        return arrays.peak_memory(fn, self.device)

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        out, lse = kernel.forward(kernel.prepare(q, k, v, steps=self.steps, **options), block_k=self.block_k)
        return (out.to(q.dtype), lse) if return_lse else out.to(q.dtype)

    def sdpa_backward(self, q, k, v, dout, **options):
        """The FlashAttention-2 backward of :mod:`.backward`: P recomputed per key tile from the saved LSE."""
        problem = kernel.prepare(q, k, v, steps=self.steps, **options)
        bias = options.get("bias")
        grads = backward.backward(problem, dout, None if bias is None else tuple(bias.shape), self.block_k)
        dtypes = (q.dtype, k.dtype, v.dtype) + (() if bias is None else (bias.dtype,))
        return tuple(grad.to(dtype) for grad, dtype in zip(grads, dtypes, strict=True))

    def flash_forward(self, q, k, v, *, block_q, block_k, **options):
        block_q = _checks.integer("block_q", block_q, low=1)
        block_k = _checks.integer("block_k", block_k, low=1)
        out, lse = kernel.forward(
            kernel.prepare(q, k, v, steps=self.steps, **options), block_q=block_q, block_k=block_k
        )
        return out.to(q.dtype), lse

    def split_kv(self, q, k, v, *, num_splits, **options):
        num_splits = _checks.integer("num_splits", num_splits, low=1)
        out, lse = kernel.split_kv(kernel.prepare(q, k, v, steps=self.steps, **options), num_splits, self.block_k)
        return out.to(q.dtype), lse

    def merge_partials(self, outs, lses):
        outs, lses = arrays.tensor("outs", outs), arrays.tensor("lses", lses)
        _checks.partials(outs, lses)
        if bool((torch.isnan(lses) | torch.isposinf(lses)).any()):
            raise ValueError("lses must be finite or -inf")
        out, lse = kernel.merge(outs.to(torch.promote_types(outs.dtype, torch.float32)), lses)
        return out.to(outs.dtype), lse

    def decode(self, q, k_cache, v_cache, *, cache_lens, num_splits=1, **options):
        """Lengths are read on the host (checked, and used to skip and mask): ``cache_lens`` on the
        GPU costs a synchronisation per call; a serving loop that knows them on the host passes them so."""
        check_decode_options(options)
        num_splits = _checks.integer("num_splits", num_splits, low=1)
        arrays.tensor("q", q)
        _checks.dims("k_cache", arrays.tensor("k_cache", k_cache), 4)  # its shape bounds cache_lens
        batch, capacity = k_cache.shape[0], k_cache.shape[2]
        lens = _checks.int_array("cache_lens", arrays.host(cache_lens), shape=(batch,), low=0, high=capacity)
        names = ("q", "k_cache", "v_cache")
        problem = kernel.prepare(
            q, k_cache, v_cache, causal="bottom_right", kv_lens=lens, steps=self.steps, names=names, **options
        )
        out, lse = kernel.split_kv(problem, num_splits, self.block_k)
        return out.to(q.dtype), lse

    def paged_decode(self, q, k_pages, v_pages, *, block_table, cache_lens, layout="NHD", num_splits=1, **options):
        """The pages in use gathered on the device (:mod:`.paged`), then :meth:`decode`'s path."""
        check_decode_options(options)
        full = options.get("mask") is not None or options.get("bias") is not None  # sized to the capacity
        k_cache, v_cache, lens = paged.gather(q, k_pages, v_pages, block_table, cache_lens, layout, full_capacity=full)
        return self.decode(q, k_cache, v_cache, cache_lens=lens, num_splits=num_splits, **options)

    def sparse(self, q, k, v, *, pattern, scale=None, return_lse=False, **params):
        problem = kernel.prepare(q, k, v, scale=scale, steps=self.steps)
        pat = self.block_sparse_pattern(pattern, q.shape[2], k.shape[2], params)
        reference_sparse._check_extents(pat, q.shape[0], q.shape[1])
        out, lse = kernel.block_sparse(problem, pat.params["layout"], pat.params["block_q"], pat.params["block_k"])
        return (out.to(q.dtype), lse) if return_lse else out.to(q.dtype)

    def linear_attention(self, q, k, v, **options):
        return chunked_linear.linear_attention(q, k, v, **options)

    def linear_attention_backward(self, q, k, v, dout, **options):
        return family_backward.linear_attention_backward(q, k, v, dout, **options)

    def retention_backward(self, q, k, v, dout, **options):
        return family_backward.retention_backward(q, k, v, dout, **options)

    def sparse_backward(self, q, k, v, dout, *, pattern, scale=None, **params):
        return family_backward.sparse_backward(self, q, k, v, dout, pattern=pattern, scale=scale, **params)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401  (torch.compile's CUDA code generator)
    except ImportError:
        return False
    return True
