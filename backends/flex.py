"""``flex``: PyTorch's FlexAttention, compiled, as a backend under test (CUDA).

Every spec option becomes FlexAttention's own vocabulary: causal, window, padding and boolean
masks are one ``mask_mod`` turned into a ``BlockMask`` (fully masked blocks are skipped by the
kernel); softcap, bias and ALiBi are one ``score_mod``, applied by Flex after its scale. The LSE
comes from ``return_lse=True``. The compiled kernel is always used: the recompile limit is raised
so that Dynamo never falls back to eager execution, which would test a different implementation.

Variants: ``flex`` compiles for static shapes (one compile per shape, seconds each: what the
benchmark times, and what the GPU conformance run checks, with ``--shapes=menu`` and xdist workers);
``flex:dynamic`` compiles with ``dynamic=True`` (one compile per structure rather than per shape; on
PyTorch 2.11 it fails to compile causal masks: ``docs/results/2026-11-22-conformance-flex-dynamic-h100.md``).
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from attnspec.backends import _torch_arrays as arrays
from attnspec.backends import _torch_masks as masks
from attnspec.contract import Backend, BackendError, Unsupported

torch._dynamo.config.cache_size_limit = 100_000
if hasattr(torch._dynamo.config, "recompile_limit"):
    torch._dynamo.config.recompile_limit = 100_000
_FLEX = {None: torch.compile(flex_attention, dynamic=False), "dynamic": torch.compile(flex_attention, dynamic=True)}


class FlexBackend(Backend):
    name = "flex"
    clauses = ("sdpa", "sdpa.scale", "sdpa.lse", "sdpa.fully_masked", "sdpa.gqa", "sdpa.mask", "sdpa.bias",
               "sdpa.softcap", "sdpa.alibi", "sdpa.causal.*", "sdpa.window", "sdpa.padding")
    dtypes = ("float32", "float16", "bfloat16")
    devices = ("cuda", "cpu")

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant not in _FLEX:
            raise BackendError(f"flex backend variant must be 'dynamic' or none; got {variant!r}")
        self._flex = _FLEX[variant]
        if variant:
            self.name = f"flex:{variant}"
        if self.device == "cpu":  # Inductor's CPU FlexAttention has no return_lse (PyTorch 2.13)
            self.clauses = tuple(c for c in self.clauses if c != "sdpa.lse")

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def sdpa(self, q, k, v, *, return_lse=False, scale=None, causal=None, window=None, mask=None, bias=None,
             softcap=None, alibi_slopes=None, q_lens=None, kv_lens=None):
        b, h_q, n_q, _ = q.shape
        n_k = k.shape[2]
        lengths = masks.lengths(q, k, q_lens, kv_lens)
        score_mod = _score_mod(softcap, None if bias is None else bias.expand(b, h_q, n_q, n_k),
                               None if alibi_slopes is None else alibi_slopes.to(torch.float32).expand(b, h_q),
                               lengths[1] - lengths[0])
        try:
            block_mask = _block_mask(q, k, causal, window, mask, q_lens, kv_lens)
            result = self._flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                           enable_gqa=h_q != k.shape[1], return_lse=q.is_cuda)
            out, lse = result if q.is_cuda else (result, None)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            if any(w in text.lower() for w in ("not supported", "unsupported", "must be", "requires")):
                raise Unsupported(f"flex: {text}") from None
            raise
        return (out, lse) if return_lse else out


_BLOCK_MASKS: dict = {}  # rules without tensors are the same BlockMask every call: build it once
#: up to this many (query, key) pairs the BlockMask is built by evaluating ``mask_mod`` eagerly, which
#: gives the same BlockMask as the compiled builder without a compile per test shape
_EAGER_MASK_PAIRS = 2**22


def _block_mask(q, k, causal, window, mask, q_lens, kv_lens):
    """The BlockMask of the visibility rules (compiled, never a dense B*H*N*N tensor), or None."""
    b, h_q, n_q, _ = q.shape
    n_k = k.shape[2]
    if causal is None and window is None and mask is None and q_lens is None and kv_lens is None:
        return None
    per_batch = q_lens is not None or kv_lens is not None or mask is not None
    q_l, kv_l = masks.lengths(q, k, q_lens, kv_lens)
    key = None if mask is not None else (n_q, n_k, causal, window, b if per_batch else None,
                                         tuple(q_l.tolist()) if per_batch else None, tuple(kv_l.tolist()) if per_batch else None)
    if key is not None and key in _BLOCK_MASKS:
        return _BLOCK_MASKS[key]
    mask_mod = _mask_mod(q_l, kv_l, causal, window, None if mask is None else mask.expand(b, h_q, n_q, n_k),
                         per_batch, n_k - n_q)
    batch, heads = b if per_batch else 1, h_q if mask is not None else 1
    block = create_block_mask(mask_mod, b if per_batch else None, h_q if mask is not None else None, n_q, n_k,
                              device=q.device, _compile=batch * heads * n_q * n_k > _EAGER_MASK_PAIRS)
    if key is not None:
        _BLOCK_MASKS[key] = block
    return block


def _mask_mod(q_lens, kv_lens, causal, window, mask, per_batch: bool, offset: int):
    # window sides go in as tensors: Dynamo would specialise (recompile) on each captured int
    lo, hi = (torch.tensor(side, device=q_lens.device) for side in window) if window is not None else (None, None)

    def aligned_offset(b):
        return kv_lens[b] - q_lens[b] if per_batch else offset

    def mask_mod(b, h, q_idx, kv_idx):
        off = aligned_offset(b)
        ok = (q_idx < q_lens[b]) & (kv_idx < kv_lens[b]) if per_batch else q_idx >= 0
        if causal == "top_left":
            ok = ok & (kv_idx <= q_idx)
        elif causal == "bottom_right":
            ok = ok & (kv_idx <= q_idx + off)
        if window is not None:
            if window[0] >= 0:
                ok = ok & (kv_idx >= q_idx + off - lo)
            if window[1] >= 0:
                ok = ok & (kv_idx <= q_idx + off + hi)
        if mask is not None:
            ok = ok & mask[b, h, q_idx, kv_idx]
        return ok

    return mask_mod


def _score_mod(softcap, bias, slopes, offsets):
    if softcap is None and bias is None and slopes is None:
        return None

    cap = None if softcap is None else torch.tensor(softcap, dtype=torch.float32, device=offsets.device)

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:  # as a tensor: a captured float would be specialised (a compile per value)
            score = torch.tanh(score / cap) * cap
        if bias is not None:
            score = score + bias[b, h, q_idx, kv_idx]
        if slopes is not None:
            score = score - slopes[b, h] * (q_idx + offsets[b] - kv_idx).abs()
        return score

    return score_mod
