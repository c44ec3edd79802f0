"""``xformers[:flash|cutlass|splitk]``: xFormers' ``memory_efficient_attention`` under the spec.

Called as a model calls it: ``q, k, v`` in xFormers' ``(B, N, H, D)`` layout (GQA in its 5-D
``(B, N, H_kv, G, D)`` layout, K and V expanded over the group with stride 0), the visibility rules
as its attention-bias classes, unchanged numerics:

=============================  =====================================================================
spec option                    xFormers
=============================  =====================================================================
``causal="top_left"``          ``LowerTriangularMask``
``causal="bottom_right"``      ``LowerTriangularFromBottomRightMask``
``window=(l, r)``              ``LocalAttentionFromBottomRightMask(window_left=l, window_right=r)``
                               (``-1``, unbounded, as ``N_q + N_k``: wider than any pair's distance); with
                               bottom-right causality the right side is ``min(r, 0)``
``bias``                       a tensor ``attn_bias``, in storage whose rows are padded to 16
                               elements (its kernels' alignment, as its docs ask)
``return_lse``                 ``memory_efficient_attention_partial`` (its ``(out, lse)`` form)
``sparse.document``            ``BlockDiagonalMask`` / ``BlockDiagonalCausalMask`` over the packed
                               batch, for documents that are contiguous runs
``flash.merge``                ``merge_attentions`` (its Triton kernel)
=============================  =====================================================================

The variant pins the forward operator (``flash``: ``fmha.flash.FwOp``, ``cutlass``:
``fmha.cutlass.FwOp``, ``splitk``: ``fmha.triton_splitk.FwOp``); none lets xFormers' dispatcher
choose. What no bias class expresses (masks, softcap, ALiBi, query lengths, a top-left window or a
window with top-left causality) is declined. On ``--device=cpu`` only ``flash.merge`` runs: its
Triton kernel in Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton loads).
Needs ``pip install xformers`` (tested: 0.0.35).
"""

from __future__ import annotations

import numpy as np

from attnspec.backends import _torch_arrays as arrays
from attnspec.backends._triton_mode import select_mode
from attnspec.backends.torch_tiled import kernel as torch_kernel
from attnspec.contract import Backend, BackendError, Unsupported

OPERATORS = {"flash": "flash", "cutlass": "cutlass", "splitk": "triton_splitk"}
CUDA_CLAUSES = (
    "sdpa",
    "sdpa.scale",
    "sdpa.gqa",
    "sdpa.causal.top_left",
    "sdpa.causal.bottom_right",
    "sdpa.window",
    "sdpa.bias",
    "sdpa.lse",
    "sparse.document",
    "flash.merge",
)


def _fmha():
    try:
        from xformers.ops import fmha
    except ImportError as exc:
        raise BackendError(f"the xformers backend needs xFormers: pip install xformers ({exc})") from None
    return fmha


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"xformers": "XformersBackend"}


class XformersBackend(Backend):
    name = "xformers"
    clauses: tuple[str, ...] = CUDA_CLAUSES
    dtypes = ("float32", "float16", "bfloat16")
    devices = ("cuda", "cpu")

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant not in (None, *OPERATORS):
            raise BackendError(f"xformers backend variant must be one of {tuple(OPERATORS)}; got {variant!r}")
        interpret = not self.device.startswith("cuda")
        select_mode(interpret, "xformers")  # before xFormers imports Triton
        if interpret:
            self.clauses = ("flash.merge",)
            self.name = "xformers:interpreter"
        self.fmha = _fmha()
        self.op = getattr(self.fmha, OPERATORS[variant]).FwOp if variant else None
        if variant:
            self.name = f"xformers:{variant}"
        import xformers

        self.version = xformers.__version__

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        problem = torch_kernel.prepare(q, k, v, **options)
        bias = attention_bias(self.fmha, problem, options.get("bias"))
        return self._attend(q, k, v, bias, problem.scale, return_lse)

    def sparse(self, q, k, v, *, pattern, scale=None, return_lse=False, document_ids=None, causal=False, **params):
        if pattern != "document" or params:
            raise Unsupported(f"pattern {pattern!r}: xFormers' bias classes express document masks only")
        problem = torch_kernel.prepare(q, k, v, scale=scale)
        b, _, n, _ = q.shape
        if k.shape[2] != n:
            raise Unsupported("documents with N_q != N_k: a packed batch is one sequence for queries and keys")
        lengths = document_runs(np.asarray(document_ids), b, n)
        cls = self.fmha.attn_bias.BlockDiagonalCausalMask if causal else self.fmha.attn_bias.BlockDiagonalMask
        # the batch packed into one sequence, as xFormers' block-diagonal masks take it: (1, H, B * N, D)
        packed = [x.transpose(0, 1).reshape(1, x.shape[1], b * n, x.shape[3]) for x in (q, k, v)]
        result = self._attend(*packed, cls.from_seqlens(lengths), problem.scale, return_lse)
        out, lse = result if return_lse else (result, None)
        out = out.reshape(out.shape[1], b, n, out.shape[3]).transpose(0, 1)
        return (out, lse.reshape(lse.shape[1], b, n).transpose(0, 1)) if return_lse else out

    def merge_partials(self, outs, lses):
        if outs.dim() != 5 or lses.shape != outs.shape[:4] or outs.shape[0] < 1:
            raise ValueError(
                f"outs must be (S, B, H, N, D_v) with S >= 1 and lses (S, B, H, N); "
                f"got {tuple(outs.shape)} and {tuple(lses.shape)}"
            )
        out, lse = self.fmha.merge_attentions(outs.transpose(2, 3), lses.float(), output_dtype=outs.dtype)
        return out.transpose(1, 2), lse

    def _attend(self, q, k, v, bias, scale, return_lse):
        """The call in xFormers' layout, from and to the spec's ``(B, H, N, D)``."""
        import torch

        h_q, h_kv = q.shape[1], k.shape[1]
        xq, xk, xv = (x.transpose(1, 2) for x in (q, k, v))  # (B, N, H, D)
        if h_q != h_kv:
            b, n_q, _, d = xq.shape
            g = h_q // h_kv
            xq = xq.reshape(b, n_q, h_kv, g, d)
            xk, xv = (x[:, :, :, None].expand(-1, -1, -1, g, -1) for x in (xk, xv))
        with torch.no_grad():
            if return_lse:
                out, lse = self.fmha.memory_efficient_attention_partial(xq, xk, xv, bias, scale=scale, op=self.op)
            else:
                out = self.fmha.memory_efficient_attention(xq, xk, xv, bias, scale=scale, op=self.op)
        out = out.reshape(out.shape[0], out.shape[1], h_q, out.shape[-1]).transpose(1, 2).to(q.dtype)
        if not return_lse:
            return out
        return out, lse.reshape(lse.shape[0], h_q, -1)[..., : out.shape[2]]


def attention_bias(fmha, problem, bias=None):
    """The xFormers attention bias for a prepared ``sdpa`` problem; Unsupported where none expresses it."""
    if problem.mask is not None or problem.softcap is not None or problem.slopes is not None:
        raise Unsupported("mask, softcap and ALiBi: no xFormers attention-bias class expresses them")
    b, _, _, n_q, n_k, _ = problem.shape
    if np.any(problem.q_lens != n_q) or np.any(problem.kv_lens != n_k):
        raise Unsupported(
            "q_lens/kv_lens: declined (xFormers pads keys only through its packed block-diagonal classes)"
        )
    cls = fmha.attn_bias
    if problem.window is not None:
        if problem.window_top_left or problem.causal == "top_left":
            raise Unsupported(
                "a top-left window, or a window with top-left causality: xFormers' windows are bottom-right"
            )
        left, right = (n_q + n_k if side < 0 else side for side in problem.window)
        if problem.causal == "bottom_right":
            right = min(right, 0)
        rule = cls.LocalAttentionFromBottomRightMask(window_left=left, window_right=right)
    elif problem.causal is not None:
        rule = cls.LowerTriangularMask() if problem.causal == "top_left" else cls.LowerTriangularFromBottomRightMask()
    else:
        rule = None
    if bias is None:
        return rule
    if rule is not None:
        raise Unsupported("a bias with a causal or window rule: declined (one tensor bias or one rule per call)")
    h_q, h_kv = problem.bias.shape[1], problem.k.shape[1]
    padded = aligned_bias(problem.bias, b, h_q, n_q, n_k)
    # with GQA, xFormers' 5-D layout takes the bias as (B, H_kv, G, N_q, N_k): a view, padding kept
    return padded if h_q == h_kv else padded.reshape(b, h_kv, h_q // h_kv, n_q, n_k)


def aligned_bias(bias, b: int, h: int, n_q: int, n_k: int):
    """``bias`` (broadcast to ``(B, H, N_q, N_k)``) in storage with rows padded to 16 elements."""
    import torch

    padded = torch.empty(b, h, n_q, -(-n_k // 16) * 16, dtype=bias.dtype, device=bias.device)
    view = padded[..., :n_k]
    view.copy_(bias.expand(b, h, n_q, n_k))
    return view


def document_runs(ids: np.ndarray, b: int, n: int) -> list[int]:
    """Run lengths of each batch item's documents, item after item; Unsupported where a document
    is not one contiguous run (a block-diagonal mask cannot express it)."""
    rows = np.broadcast_to(ids if ids.ndim == 2 else ids[None], (b, n))
    lengths = []
    for row in rows:
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        if len(set(row[starts].tolist())) != len(starts):
            raise Unsupported("a document in several runs: block-diagonal masks need contiguous documents")
        lengths.extend(np.diff(np.r_[starts, n]).tolist())
    return lengths
