"""``torch-sdpa[:kernel]``: PyTorch's ``scaled_dot_product_attention`` as a backend under test.

``--backend=torch-sdpa`` lets PyTorch choose the kernel; ``torch-sdpa:math``, ``:flash``,
``:efficient`` and ``:cudnn`` pin one through ``torch.nn.attention.sdpa_kernel``. The adapter
expresses every option the public API can take: ``is_causal`` (top-left), bottom-right causal
through ``torch.nn.attention.bias.causal_lower_right``, window, padding and mask as a boolean
``attn_mask``, bias and ALiBi as a float ``attn_mask``, GQA through ``enable_gqa``. It does not
declare softcap (no such argument) or the LSE (not returned by the public API). When the pinned
kernel refuses a case ("No available kernel"), the case is declined, not failed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnspec.backends import _torch_arrays as arrays
from attnspec.backends import _torch_visibility as vis
from attnspec.contract import Backend, Unsupported

KERNELS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


class TorchSdpaBackend(Backend):
    name = "torch-sdpa"
    clauses = (
        "sdpa",
        "sdpa.scale",
        "sdpa.fully_masked",
        "sdpa.gqa",
        "sdpa.mask",
        "sdpa.bias",
        "sdpa.alibi",
        "sdpa.causal.*",
        "sdpa.window",
        "sdpa.padding",
    )
    dtypes = ("float32", "float16", "bfloat16")
    devices = ("cuda", "cpu")

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant is not None and variant not in KERNELS:
            raise ValueError(f"torch-sdpa kernel must be one of {sorted(KERNELS)}; got {variant!r}")
        self.kernel = variant
        self.name = f"torch-sdpa:{variant}" if variant else "torch-sdpa"
        if self.device == "cpu":
            self.dtypes = ("float64", "float32", "float16", "bfloat16")

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def sdpa(
        self,
        q,
        k,
        v,
        *,
        scale=None,
        causal=None,
        window=None,
        mask=None,
        bias=None,
        alibi_slopes=None,
        q_lens=None,
        kv_lens=None,
    ):
        kwargs = dict(scale=scale, enable_gqa=q.shape[1] != k.shape[1])
        masked = vis.restricts(window=window, mask=mask, q_lens=q_lens, kv_lens=kv_lens)
        biased = bias is not None or alibi_slopes is not None
        if causal is not None and not (masked or biased):  # the API's own causal forms, no dense mask
            if causal == "top_left":
                kwargs["is_causal"] = True
            else:
                from torch.nn.attention.bias import causal_lower_right

                kwargs["attn_mask"] = causal_lower_right(q.shape[2], k.shape[2])
        else:
            kwargs["attn_mask"] = _dense_mask(q, k, causal, window, mask, bias, alibi_slopes, q_lens, kv_lens)
        return self._call(q, k, v, kwargs)

    def _call(self, q, k, v, kwargs):
        try:
            if self.kernel is None:
                return F.scaled_dot_product_attention(q, k, v, **kwargs)
            with sdpa_kernel(KERNELS[self.kernel]):
                return F.scaled_dot_product_attention(q, k, v, **kwargs)
        except RuntimeError as exc:
            text = str(exc)
            if "No available kernel" in text or "not supported" in text.lower():
                raise Unsupported(f"{self.name}: {text.splitlines()[0][:200]}") from None
            raise


def _dense_mask(q, k, causal, window, mask, bias, alibi_slopes, q_lens, kv_lens):
    """The rules on the full grid as one ``attn_mask``, or None: boolean without bias and ALiBi, else
    float (their sum, ``-inf`` where a key is hidden) in ``q``'s dtype."""
    (b, h_q, n_q, _), n_k = q.shape, k.shape[2]
    dtype = torch.promote_types(q.dtype, torch.float32)
    rules = vis.Rules(
        n_q,
        n_k,
        causal,
        *vis.window_sides(window),
        *vis.lengths(q, k, q_lens, kv_lens),
        mask=None if mask is None else mask.to(q.device, torch.bool),
        bias=None if bias is None else bias.to(q.device),
        slopes=None if alibi_slopes is None else alibi_slopes.to(q.device, dtype).expand(b, h_q),
    )
    grid = vis.full_grid(b, h_q, n_q, n_k, q.device)
    visible = rules.visible(*grid) if vis.restricts(causal, window, mask, q_lens, kv_lens) else None
    if not rules.modifies:
        return visible
    additive = rules.modify(torch.zeros((), dtype=dtype, device=q.device), *grid)
    return (additive if visible is None else additive.masked_fill(~visible, float("-inf"))).to(q.dtype)
