"""``torch-sdpa[:kernel]``: PyTorch's ``scaled_dot_product_attention`` as a backend under test.

``--backend=torch-sdpa`` lets PyTorch choose the kernel; ``torch-sdpa:math``, ``:flash``,
``:efficient`` and ``:cudnn`` pin one through ``torch.nn.attention.sdpa_kernel``. The adapter
expresses every option the public API can take: ``is_causal`` (top-left), bottom-right causal
through ``torch.nn.attention.bias.causal_lower_right``, window, padding and mask as a boolean
``attn_mask``, bias and ALiBi as a float ``attn_mask``, GQA through ``enable_gqa``. It does not
declare softcap (no such argument). When the pinned kernel refuses a case ("No available
kernel"), the case is declined, not failed.

The LSE (``sdpa.lse``, asked for with ``return_lse=True``) is not returned by the public API; the
private ATen operators behind it return it, and the adapter calls the one of the kernel that runs
(pinned, or the one ``torch._fused_sdp_choice`` picks), with K and V repeated for GQA (those
operators take no ``enable_gqa``). Read from PyTorch 2.11 (the GPU image) and 2.13 (CPU):

- CPU flash: ``aten::_scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, *,
  attn_mask, scale) -> (output, logsumexp)``;
- CUDA flash: ``aten::_scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal,
  return_debug_mask, *, scale) -> (output, logsumexp, ...)``: no mask, so only plain and top-left
  causal calls;
- CUDA memory-efficient: ``aten::_scaled_dot_product_efficient_attention(q, k, v, attn_bias,
  compute_log_sumexp, dropout_p, is_causal, *, scale) -> (output, log_sumexp, ...)``, the LSE
  padded along N to a multiple of 32 (cut here);
- CUDA cuDNN: ``aten::_scaled_dot_product_cudnn_attention(q, k, v, attn_bias, compute_log_sumexp,
  dropout_p, is_causal, return_debug_mask, *, scale) -> (output, logsumexp, ...)``;
- the math kernel returns the attention weights, not an LSE: declined.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnspec import validation as _checks
from attnspec.backends import SDPA_FORWARD_CLAUSES, _torch_autograd
from attnspec.backends import _torch_arrays as arrays
from attnspec.backends import _torch_visibility as vis
from attnspec.contract import Backend, Unsupported

KERNELS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"torch-sdpa": "TorchSdpaBackend"}


class TorchSdpaBackend(Backend):
    name = "torch-sdpa"
    # every forward option but softcap (no such argument); the window aligned either way (a dense mask)
    clauses = tuple(c for c in SDPA_FORWARD_CLAUSES if c != "sdpa.softcap") + ("sdpa.window.top_left",)
    # the gradients PyTorch's autograd computes through the kernel that runs (no softcap to differentiate)
    clauses += ("sdpa.grad", "sdpa.grad.hidden", "sdpa.grad.gqa", "sdpa.grad.scale", "sdpa.grad.bias")
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
        window_align=None,
        mask=None,
        bias=None,
        alibi_slopes=None,
        q_lens=None,
        kv_lens=None,
        return_lse=False,
    ):
        top_left = _checks.window_align(window_align) == "top_left"
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
            kwargs["attn_mask"] = _dense_mask(q, k, causal, window, mask, bias, alibi_slopes, q_lens, kv_lens, top_left)
        if return_lse:
            return self._call_with_lse(q, k, v, kwargs)
        return self._call(q, k, v, kwargs)

    def sdpa_backward(self, q, k, v, dout, **options):
        """Autograd through :meth:`sdpa` (the same kernel, pinned or chosen by PyTorch)."""
        return _torch_autograd.backward(self.name, self.sdpa, q, k, v, dout, options)

    def _call_with_lse(self, q, k, v, kwargs):
        """``(out, lse)`` from the private operator of the kernel that runs (module docstring)."""
        from torch.nn.attention.bias import CausalBias

        gqa = kwargs.pop("enable_gqa")
        if gqa:  # the private operators take no enable_gqa
            k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
        mask, causal, scale = kwargs.get("attn_mask"), kwargs.get("is_causal", False), kwargs["scale"]
        if isinstance(mask, CausalBias):  # bottom-right causal: the operators take it as a dense mask
            mask = mask._materialize(q.device)
        mask = _additive(mask, q)  # the operators take float masks only (the public API converts bool)
        kernel = (
            KERNELS[self.kernel]
            if self.kernel
            else SDPBackend(torch._fused_sdp_choice(q, k, v, mask, 0.0, causal, scale=scale))
        )
        ops = torch.ops.aten
        try:
            if kernel == SDPBackend.FLASH_ATTENTION and q.device.type == "cpu":
                return ops._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, 0.0, causal, attn_mask=mask, scale=scale
                )
            if kernel == SDPBackend.FLASH_ATTENTION and mask is None:
                out, lse = ops._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
                return out, lse
            if kernel == SDPBackend.EFFICIENT_ATTENTION:
                out, lse = ops._scaled_dot_product_efficient_attention(q, k, v, mask, True, 0.0, causal, scale=scale)[
                    :2
                ]
                return out, lse[..., : q.shape[2]]
            if kernel == SDPBackend.CUDNN_ATTENTION:
                out, lse = ops._scaled_dot_product_cudnn_attention(
                    q, k, v, mask, True, 0.0, causal, False, scale=scale
                )[:2]
                return out, lse.reshape(q.shape[:3])
        except RuntimeError as exc:
            raise Unsupported(
                f"{self.name}: the LSE operator of {kernel.name} refused: {str(exc).splitlines()[0][:200]}"
            ) from None
        raise Unsupported(
            f"{self.name}: no LSE from the {kernel.name} kernel for this call (a mask, or the math kernel)"
        )

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


def _dense_mask(q, k, causal, window, mask, bias, alibi_slopes, q_lens, kv_lens, window_top_left=False):
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
        window_top_left=window_top_left,
    )
    grid = vis.full_grid(b, h_q, n_q, n_k, q.device)
    visible = rules.visible(*grid) if vis.restricts(causal, window, mask, q_lens, kv_lens) else None
    if not rules.modifies:
        return visible
    additive = rules.modify(torch.zeros((), dtype=dtype, device=q.device), *grid)
    return (additive if visible is None else additive.masked_fill(~visible, float("-inf"))).to(q.dtype)


def _additive(mask, q):
    """A boolean mask as the float bias the fused operators take (``-inf`` where hidden)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
