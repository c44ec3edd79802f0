"""Hand check of the xformers finding: ``merge_attentions`` lets an empty partial's NaN through.

Clause ``flash.merge``: a partial with ``lse = -inf`` (no key in its subset) contributes nothing,
whatever its ``out`` holds. Standalone (no attnspec): two partials of one query row, the second
empty (``lse = -inf``) with a NaN output, as split-KV kernels may leave an empty split's buffer.
On a CPU this runs xFormers' Triton merge kernel in Triton's interpreter; on a GPU, compiled.
Run: ``TRITON_INTERPRET=1 python THIS_FILE`` (CPU) or ``python THIS_FILE`` (CUDA).
"""

import os

import torch
import xformers
from xformers.ops import fmha

device = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
print(f"xformers {xformers.__version__}, torch {torch.__version__}, device {device}")
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    outs = torch.tensor([0.64, float("nan")], dtype=dtype, device=device).reshape(2, 1, 1, 1, 1)  # (S, B, M, H, K)
    lses = torch.tensor([0.3, -float("inf")], device=device).reshape(2, 1, 1, 1)  # (S, B, H, M)
    out, lse = fmha.merge_attentions(outs, lses, output_dtype=dtype)
    print(
        f"{str(dtype):15} merged out {out.item()!s:>6} (expected 0.64: the empty partial adds nothing), lse {lse.item():.4f}"
    )
