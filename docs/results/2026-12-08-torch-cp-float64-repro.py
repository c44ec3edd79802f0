"""Hand check of the torch-cp finding: PyTorch's ring attention merges float64 partials in float32.

Standalone (no attnspec): two gloo processes run PyTorch's own ``_templated_ring_attention`` (what
``context_parallel`` dispatches SDPA to) on float64 shards of a causal self-attention of 4 tokens,
once with PyTorch's default ``_cp_options.convert_to_f32 = True`` and once with it False, and
compare with float64 attention on the gathered sequence. Run: ``python THIS_FILE``.
"""

import math
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

P, B, H, N, D = 2, 1, 1, 4, 8


def exact(q, k, v):
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


def rank_main(rank, store, results):
    from torch.distributed.tensor.experimental._context_parallel import _attention as cp

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=P)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=gen, dtype=torch.float64) for _ in range(3))
    shard = slice(rank * N // P, (rank + 1) * N // P)  # contiguous layout
    want_out, want_lse = exact(q, k, v)
    cp._cp_options.enable_load_balance = False
    for convert in (True, False):
        cp._cp_options.convert_to_f32 = convert
        out, lse, *_ = cp._templated_ring_attention(
            dist.group.WORLD,
            2,
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
            q[:, :, shard],
            k[:, :, shard],
            v[:, :, shard],
            is_causal=True,
            dropout_p=0.0,
        )
        err = (out - want_out[:, :, shard]).abs().max().item()
        lse_err = (lse - want_lse[:, :, shard]).abs().max().item()
        results[(rank, convert)] = (out.dtype, lse.dtype, err, lse_err)
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(os.path.join(tmp, "store"), results), nprocs=P)
        print(f"torch {torch.__version__}; float64 inputs, causal, P = {P}, N = {N}, D = {D}")
        for (rank, convert), (dtype, lse_dtype, err, lse_err) in sorted(results.items()):
            print(
                f"rank {rank} convert_to_f32={convert!s:5}: out {dtype}, max |out error| {err:.1e}, "
                f"lse {lse_dtype}, max |lse error| {lse_err:.1e}"
            )
