"""``transformers-t5``: T5's relative position buckets and bias, from ``T5Attention`` itself.

``t5_bucket`` calls ``T5Attention._relative_position_bucket`` (a static method) on the offsets.
``t5_bias`` builds a ``T5Attention`` from a ``T5Config`` (``num_heads = H``,
``relative_attention_num_buckets``, ``relative_attention_max_distance``; ``is_decoder = not
bidirectional``, as T5 builds its decoder's layers), sets its ``relative_attention_bias`` weight to
``table`` and calls ``compute_bias(N_q, N_k, past_seen_tokens=offset)``, the bias a layer adds to
its scores. That method places the keys at ``0 .. N_k - 1`` and the queries at
``offset .. offset + N_q - 1`` (a decoding step after ``offset`` cached tokens); other positions
are declined. Needs ``pip install attnspec[transformers]``.
"""

from __future__ import annotations

import torch

from attnspec.backends._hf_modules import HfModuleBackend
from attnspec.contract import Unsupported


def _first_of_a_run(positions: torch.Tensor, name: str) -> int:
    """The offset ``o`` of positions ``o, o + 1, ...``: the only positions ``compute_bias`` makes."""
    start = int(positions[0]) if len(positions) else 0
    if not torch.equal(positions.long().cpu(), torch.arange(start, start + len(positions))):
        raise Unsupported(f"{name} are not consecutive: T5Attention.compute_bias makes arange positions")
    return start


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"transformers-t5": "TransformersT5Backend"}


class TransformersT5Backend(HfModuleBackend):
    name = "transformers-t5"
    clauses = ("t5.bucket", "t5.bias")
    model = "t5"

    def t5_bucket(self, relative_position, bidirectional=True, num_buckets=32, max_distance=128):
        rel = torch.as_tensor(relative_position, device=self.device).long()
        return self.modeling.T5Attention._relative_position_bucket(
            rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
        )

    def t5_bias(self, table, q_positions, k_positions, bidirectional=True, num_buckets=32, max_distance=128):
        if table.shape[0] != num_buckets:
            raise ValueError(f"table must have num_buckets = {num_buckets} rows; got {tuple(table.shape)}")
        if _first_of_a_run(k_positions, "k_positions") != 0:
            raise Unsupported("keys not at 0 .. N_k - 1: T5Attention.compute_bias places them there")
        offset = _first_of_a_run(q_positions, "q_positions")
        if offset < 0:
            raise Unsupported("queries before key 0: compute_bias takes past_seen_tokens >= 0")
        heads = table.shape[1]
        config = self.modeling.T5Config(
            d_model=heads,
            d_kv=1,
            num_heads=heads,
            relative_attention_num_buckets=num_buckets,
            relative_attention_max_distance=max_distance,
            is_decoder=not bidirectional,
        )
        layer = self.modeling.T5Attention(config, has_relative_attention_bias=True, layer_idx=0).to(
            self.device, table.dtype
        )
        with torch.no_grad():
            layer.relative_attention_bias.weight.copy_(table)
            bias = layer.compute_bias(len(q_positions), len(k_positions), device=self.device, past_seen_tokens=offset)
        return bias[0]
