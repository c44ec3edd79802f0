"""``transformers-reformer``: ``LSHSelfAttention`` (Reformer), its hashing and its chunked LSH attention.

The module is built from a ``ReformerConfig`` (``num_hashes = R``, ``num_buckets``,
``lsh_attn_chunk_length = chunk_len``, one chunk before and none after, ``is_decoder = causal``, no
dropout, ``hash_seed = None``). Its random rotations, drawn by ``torch.randn`` inside
``_hash_vectors`` with shape ``(H, D, R, n_buckets / 2)``, are replaced during the call by the given
``rotations`` (shared by the heads, in the data's dtype as the module draws them), so the reference
and the module use the same ones. ``lsh_buckets`` calls ``_hash_vectors`` and removes the module's
per-round offsets ``r * n_buckets``; ``lsh`` runs the forward with the projections
``query_key`` and ``value`` replaced by the given ``qk`` and ``v``.

Scale: the module scores ``dot(qk_i, k_j)`` with ``k_j = qk_j / sqrt(mean(qk_j^2) + 1e-6) / sqrt(D)``,
unit keys up to its epsilon: the clause's ``scale = 1``. A scale ``s`` maps exactly when it is a
power of two (``s * qk`` is then exact, hashes to the same buckets and scores ``s * dot``, up to the
module's epsilon); other scales are declined. Declined too: ``D_v != D``. No LSE.
Needs ``pip install attnspec[transformers]``.
"""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import torch

from attnspec.backends._hf_modules import HfModuleBackend, heads_last, self_attention
from attnspec.contract import Unsupported


@contextlib.contextmanager
def _rotations(rotations: torch.Tensor, heads: int):
    """``torch.randn`` returning ``rotations`` ``(R, D, n/2)`` laid out as the module draws them, ``(H, D, R, n/2)``."""
    real = torch.randn

    def given(shape, *args, dtype=None, device=None, **kwargs):
        laid_out = rotations.permute(1, 0, 2).unsqueeze(0).expand(heads, -1, -1, -1)
        if tuple(shape) != tuple(laid_out.shape):  # not the module's draw: leave it alone
            return real(shape, *args, dtype=dtype, device=device, **kwargs)
        return laid_out.to(device=device, dtype=dtype).clone()

    with mock.patch.object(torch, "randn", given):  # the module calls torch.randn at call time
        yield


def _power_of_two(scale: float) -> bool:
    mantissa, _ = math.frexp(scale)
    return scale > 0 and mantissa == 0.5


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"transformers-reformer": "TransformersReformerBackend"}


class TransformersReformerBackend(HfModuleBackend):
    name = "transformers-reformer"
    clauses = ("lsh.buckets", "lsh.chunks", "lsh.rounds", "lsh.self_exclusion")
    model = "reformer"

    def _layer(self, heads: int, d: int, rotations, chunk_len: int = 64, causal: bool = False):
        config = self.modeling.ReformerConfig(
            hidden_size=heads * d,
            num_attention_heads=heads,
            attention_head_size=d,
            num_buckets=2 * rotations.shape[-1],
            num_hashes=rotations.shape[0],
            lsh_attn_chunk_length=chunk_len,
            lsh_num_chunks_before=1,
            lsh_num_chunks_after=0,
            is_decoder=causal,
            lsh_attention_probs_dropout_prob=0.0,
            hash_seed=None,
            attn_layers=["lsh"],
        )
        return self.modeling.LSHSelfAttention(config, layer_idx=0).to(self.device).eval()

    def lsh_buckets(self, qk, *, rotations):
        b, h, n, _ = qk.shape
        layer = self._layer(h, qk.shape[-1], rotations)
        with torch.no_grad(), _rotations(rotations, h):
            flat = layer._hash_vectors(qk, rotations.shape[0], None)
        rounds = flat.view(b, h, rotations.shape[0], n)
        offsets = torch.arange(rotations.shape[0], device=flat.device).view(1, 1, -1, 1) * layer.num_buckets
        return rounds - offsets

    def lsh(self, qk, v, *, rotations, chunk_len, causal=False, scale=None):
        b, h, n, d = self_attention(qk, qk, v)
        if n % chunk_len:
            raise ValueError(f"chunk_len = {chunk_len} must divide N = {n}")
        s = d**-0.5 if scale is None else float(scale)
        if not _power_of_two(s):
            raise Unsupported(f"scale {s}: the module's unit keys take scale 1; only powers of two map exactly")
        layer = self._layer(h, d, rotations, chunk_len, bool(causal))
        layer.query_key = _Fixed(heads_last(qk * s))  # exact: s is a power of two
        layer.value = _Fixed(heads_last(v))
        states = torch.zeros(b, n, h * d, dtype=qk.dtype, device=qk.device)
        with torch.no_grad(), _rotations(rotations, h):
            out = layer(states).hidden_states
        return out.view(b, n, h, d).transpose(1, 2)


class _Fixed(torch.nn.Module):
    """A projection that returns the given ``(B, N, H * D)`` tensor (the module's hidden states are unused)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value.clone()
