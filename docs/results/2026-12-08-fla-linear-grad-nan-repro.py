"""Hand check of the fla finding under ``linear.grad``: a row whose denominator is 0 gets NaN gradients in float16.

Clause ``linear.grad``: a row whose denominator is 0 gets exactly 0 gradient, never NaN. One token,
one head, D = 1, the relu feature map (as fla's ``LinearAttention`` layer applies it) of a negative
query and key: both features are 0, so the denominator ``dot(q, z)`` is 0. fla adds ``1e-10``,
which float16 rounds to 0. Calls fla's ``fused_recurrent_linear_attn`` directly and backpropagates
a gradient of ones. On a CPU it runs in Triton's interpreter (with the adapter's interpreter-only
shim, ``attnspec.backends.fla.interpret_third_party``); on a GPU, compiled.
Run: ``python THIS_FILE`` (CPU) or ``python THIS_FILE cuda``.
"""

import os
import sys

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
os.environ["TRITON_INTERPRET"] = "1" if device == "cpu" else "0"

import torch  # noqa: E402
from fla.ops.linear_attn import fused_recurrent_linear_attn  # noqa: E402

from attnspec.backends.fla import interpret_third_party  # noqa: E402

if device == "cpu":
    interpret_third_party("fla")
for dtype in (torch.float32, torch.float16):
    q, k, v = (
        torch.tensor(x, dtype=dtype, device=device).reshape(1, 1, 1, 1) for x in (-1.0, -2.0, 3.0)
    )  # [B, T, H, K]
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out, _ = fused_recurrent_linear_attn(torch.relu(q), torch.relu(k), v, scale=1.0, normalize=True)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    print(
        f"{str(dtype):14} out {out.item()!s:>5}  dq {dq.item()!s:>5}  dk {dk.item()!s:>5}  dv {dv.item()!s:>5}  (expected 0 each)"
    )
