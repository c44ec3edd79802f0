"""``transformers-bigbird[:train|eval]``: ``BigBirdBlockSparseAttention``'s own block-sparse routine.

The adapter calls the module's ``bigbird_block_sparse_attention`` on ``q, k, v`` (its projections
are outside the clause), with the padding masks that ``BigBirdModel`` builds for a sequence without
padding (``create_masks_for_block_sparse_attn`` of ones), and transposes the context back.

The module's pattern is BigBird-ITC: ``window_blocks = 1``, global blocks exactly the first and the
last, ``block`` dividing ``N`` (the model pads), and more than ``5 + 2r`` blocks (with fewer,
``BigBirdModel`` switches to full attention and never calls the routine). Anything else is declined.
``scale`` must be the module's ``1 / sqrt(D)``.

Random blocks: rows ``1 .. n_blocks - 2`` of ``random_blocks`` (the global rows see every key
anyway) are what the module calls its ``rand_attn``, ``(H, n_blocks - 2, r)``.

- ``train`` (the default): the module's generators (``_bigbird_block_rand_mask_with_head``, and the
  legacy ``_bigbird_block_rand_mask`` for N in 1024, 3072, 4096) are replaced, on this module only,
  by ones that return the given blocks, so the reference and the module use the same ones.
  The module's own draws exclude the window and global blocks except in the legacy plan;
  the given ones may repeat them, which the clause says changes nothing.
- ``eval``: the module draws its blocks itself (in eval mode a constant: block 0 in every slot,
  ``rand_attn`` all zeros, with the config's ``num_random_blocks``); the adapter reads that plan
  back from the module's generator and runs the case only where ``random_blocks`` equals it;
  other blocks are declined.

Without random blocks (``None``, or ``r = 0``) the case is declined: the module's reshapes fail
with ``num_random_blocks = 0``.

No LSE. Needs ``pip install attnspec[transformers]``.
"""

from __future__ import annotations

import numpy as np
import torch

from attnspec.backends._hf_modules import HfModuleBackend, module_scale, self_attention
from attnspec.contract import BackendError, Unsupported

VARIANTS = ("train", "eval")


def _itc_blocks(n: int, block: int, window_blocks: int, global_blocks) -> int:
    """``n_blocks`` of a pattern the module computes, or Unsupported saying why not."""
    if n % block:
        raise Unsupported(f"N = {n} is not a multiple of block = {block} (BigBirdModel pads the sequence)")
    n_blocks = n // block
    if window_blocks != 1:
        raise Unsupported(f"window_blocks={window_blocks}: the module's window is 3 blocks (window_blocks=1)")
    given = set() if global_blocks is None else {int(g) for g in np.asarray(global_blocks.cpu()).ravel()}
    if given != {0, n_blocks - 1}:
        raise Unsupported(f"global_blocks {sorted(given)}: the module's are the first and the last block")
    return n_blocks


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"transformers-bigbird": "TransformersBigBirdBackend"}


class TransformersBigBirdBackend(HfModuleBackend):
    name = "transformers-bigbird"
    clauses = ("sparse", "sparse.bigbird")
    model = "big_bird"
    default_variant = "train"

    def __init__(self, device: str | None = None, variant: str | None = None):
        if variant not in (None, *VARIANTS):
            raise BackendError(f"transformers-bigbird variant must be one of {VARIANTS}; got {variant!r}")
        super().__init__(device)
        self.variant = variant or self.default_variant
        self.name = f"transformers-bigbird:{self.variant}"

    def sparse(self, q, k, v, *, pattern, scale=None, **params):
        b, h, n, d = self_attention(q, k, v)
        if pattern != "bigbird":
            raise Unsupported(f"pattern {pattern!r}: this module computes BigBird's")
        module_scale(scale, d)
        block = int(params["block"])
        n_blocks = _itc_blocks(n, block, int(params["window_blocks"]), params.get("global_blocks"))
        given = params.get("random_blocks")
        if given is None or given.shape[-1] == 0:
            raise Unsupported("no random blocks: the module's reshapes fail with num_random_blocks = 0")
        r = int(given.shape[-1])
        if n <= (5 + 2 * r) * block:
            raise Unsupported(f"N = {n} <= (5 + 2r) * block: BigBirdModel uses full attention there")
        layer = self._layer(h, d, block, r, q.dtype)
        plan = np.broadcast_to(np.asarray(given.cpu()), (h, n_blocks, r))[:, 1:-1]
        if self.variant == "train":
            self._use_blocks(layer, plan)
        elif not np.array_equal(plan, self._eval_plan(layer, n, block, h, r)):
            raise Unsupported(
                "random_blocks differ from the plan the module draws in eval mode (block 0 in every slot)"
            )
        blocked, band, from_mask, to_mask = self.modeling.BigBirdModel.create_masks_for_block_sparse_attn(
            torch.ones(b, n, dtype=q.dtype, device=q.device), block
        )
        masks = (band, from_mask, to_mask, blocked, blocked)  # as BigBirdEncoder passes them
        with torch.no_grad():
            out, _ = layer.bigbird_block_sparse_attention(
                q,
                k,
                v,
                *masks,
                h,
                r,
                d,
                block,
                block,
                b,
                n,
                n,
                seed=None,
                plan_from_length=None,
                plan_num_rand_blocks=None,
            )
        return out.transpose(1, 2)

    def _layer(self, heads: int, d: int, block: int, r: int, dtype):
        config = self.modeling.BigBirdConfig(
            hidden_size=heads * d,
            num_attention_heads=heads,
            block_size=block,
            num_random_blocks=r,
            attention_type="block_sparse",
        )
        layer = self.modeling.BigBirdBlockSparseAttention(config).to(self.device, dtype)
        return layer.train(self.variant == "train")

    @staticmethod
    def _use_blocks(layer, plan) -> None:
        """Replace this module's generators by ones returning ``plan`` (one ``(n_blocks - 2, r)`` per head)."""
        per_head = [np.ascontiguousarray(p, dtype=np.int32) for p in plan]
        heads = iter(per_head)
        layer._bigbird_block_rand_mask_with_head = lambda *args, **kwargs: per_head
        layer._bigbird_block_rand_mask = lambda *args, **kwargs: next(heads)  # the legacy plan: one call per head

    @staticmethod
    def _eval_plan(layer, n: int, block: int, heads: int, r: int) -> np.ndarray:
        """The blocks the module draws in eval mode, read back from its own generator."""
        if n in (1024, 3072, 4096):
            rows = [layer._bigbird_block_rand_mask(layer.max_seqlen, layer.max_seqlen, block, block, r, last_idx=1024)]
            return np.stack([rows[0][: n // block - 2]] * heads)
        lengths, counts = layer._get_rand_attn_plan(n, block, r)
        return np.stack(layer._bigbird_block_rand_mask_with_head(n, n, block, block, heads, lengths, counts))


class TransformersBigBirdEvalBackend(TransformersBigBirdBackend):
    """``transformers-bigbird:eval`` under a name of its own, for ``--backend=package.module:object``."""

    default_variant = "eval"
