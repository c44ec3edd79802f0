"""``transformers-longformer``: ``LongformerSelfAttention``'s forward, sliding window plus global tokens.

The module is built from a ``LongformerConfig`` with ``attention_window = 2w`` (its window counts
both sides) and no dropout. Its six projections (local and global ``query``, ``key``, ``value``) are
replaced by exact look-ups of the given ``q, k, v`` (:class:`~attnspec.backends._hf_modules.RowLookup`):
the clause fixes the visible pairs, and the choice of the global rows' ``q, k, v`` is outside it
(``sparse.longformer``), so both get the same arrays. Everything after the projections is the
module's: the in-place ``1 / sqrt(D)`` scaling of the queries, the banded ``_sliding_chunks``
products, the global keys' and global rows' attention, and a float32 softmax.

As ``LongformerModel`` calls it: the sequence padded to a multiple of ``2w`` (zero states, the mask
value of padding), and ``attention_mask`` holding ``(1 - m) * finfo.min`` with ``m`` 0 for padding,
1 for local and 2 for global tokens. Declined: ``window = 0`` (the module asserts a positive
window), ``window = 1`` (``attention_window = 2``: the module raises in ``_sliding_chunks``), ``N_q < N_k``, grouped heads, ``D_v != D_qk``, a scale other than ``1 / sqrt(D)``. No LSE.
Needs ``pip install attnspec[transformers]``.
"""

from __future__ import annotations

import torch

from attnspec.backends._hf_modules import (
    HfModuleBackend,
    RowLookup,
    heads_last,
    index_states,
    module_scale,
    self_attention,
)
from attnspec.contract import Unsupported


def _padded(x: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, N, E)`` with zero rows appended up to ``length``: LongformerModel's ``_pad_to_window_size``."""
    return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[1]))


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"transformers-longformer": "TransformersLongformerBackend"}


class TransformersLongformerBackend(HfModuleBackend):
    name = "transformers-longformer"
    clauses = ("sparse", "sparse.longformer")
    model = "longformer"

    def sparse(self, q, k, v, *, pattern, scale=None, window=None, global_tokens=None, **params):
        b, h, n, d = self_attention(q, k, v)
        if pattern != "longformer":
            raise Unsupported(f"pattern {pattern!r}: this module computes Longformer's")
        module_scale(scale, d)
        if window is None or global_tokens is None or params:
            raise TypeError(f"longformer takes window and global_tokens; got {sorted(params)}")
        if int(window) < 1:
            raise Unsupported("window = 0: the module asserts attention_window > 0")
        if int(window) == 1:  # docs/results/2026-12-08-longformer-window-1.py
            raise Unsupported(
                "window = 1: the module's _sliding_chunks_query_key_matmul fails for attention_window = 2"
            )
        w = int(window)
        length = -(-n // (2 * w)) * 2 * w
        layer = self._layer(h, d, w, q.dtype)
        for name, x in (("query", q), ("key", k), ("value", v)):
            table = _padded(heads_last(x), length).transpose(0, 1).reshape(length * b, h * d)  # (N, B) order
            setattr(layer, name, RowLookup(table))
            setattr(layer, f"{name}_global", RowLookup(table))
        merged = torch.zeros(b, length, device=q.device)
        merged[:, :n] = 1 + torch.broadcast_to(global_tokens.to(q.device), (b, n)).float()  # 0 pad, 1 local, 2 global
        mask = (1.0 - merged.to(q.dtype)) * torch.finfo(q.dtype).min  # get_extended_attention_mask's values
        states = index_states(length, b, h * d, q.device).transpose(0, 1)  # index n * B + b, the (N, B) order
        with torch.no_grad():
            (out,) = layer(
                states,
                attention_mask=mask,
                is_index_masked=mask < 0,
                is_index_global_attn=mask > 0,
                is_global_attn=bool((mask > 0).any()),
            )
        return out[:, :n].reshape(b, n, h, d).transpose(1, 2)

    def _layer(self, heads: int, d: int, w: int, dtype):
        config = self.modeling.LongformerConfig(
            hidden_size=heads * d,
            num_attention_heads=heads,
            attention_window=[2 * w],
            attention_probs_dropout_prob=0.0,
        )
        return self.modeling.LongformerSelfAttention(config, layer_id=0).to(self.device, dtype).eval()
