"""``transformers[:sdpa|eager]``: Hugging Face transformers' own attention functions under test.

``transformers:sdpa`` (the default) calls ``transformers.integrations.sdpa_attention.sdpa_attention_forward``,
``transformers:eager`` the eager ``eager_attention_forward`` of ``transformers.models.llama.modeling_llama``
(the one most decoder models copy), each as a model layer calls it: a module carrying
``num_key_value_groups`` (GQA: K and V repeated, or the query heads packed, by the function
itself), ``is_causal`` and ``training = False``; ``q, k, v`` ``(B, H, N, D)``; ``scaling``; the
output ``(B, N, H, D)``, transposed back here. Nothing of their numerics is changed.

Declared: ``sdpa``, ``sdpa.scale``, ``sdpa.gqa``, ``sdpa.mask``, ``sdpa.causal.top_left``. The
mask reaches the functions as the models build it: boolean for ``sdpa``; for ``eager``, which
adds it to the scores, the additive mask of transformers' mask utilities (0 where visible, the
dtype's minimum where not). Causality is the function's ``is_causal`` (top-left, ``sdpa`` only
when ``N_q > 1``; ``eager`` takes none, so it gets the causal rule inside that additive mask, as
the models give it). A mask together with ``is_causal`` is declined for ``sdpa``: the function
drops ``is_causal`` when given a mask (the models fold causality into the mask themselves).
Neither function returns an LSE. Needs ``pip install transformers`` (any recent 4.x or 5.x);
without it the backend is not loaded, with a message that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attnspec import validation as _checks
from attnspec.backends import _torch_arrays as arrays
from attnspec.contract import Backend, BackendError, Unsupported

VARIANTS = ("sdpa", "eager")


def _functions(variant: str):
    fn: Callable[..., Any]  # the two functions' signatures differ (mypy sees them once transformers is installed)
    try:
        if variant == "sdpa":
            from transformers.integrations.sdpa_attention import sdpa_attention_forward as fn
        else:
            from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    except ImportError as exc:
        raise BackendError(
            f"the transformers backend needs Hugging Face transformers: pip install transformers ({exc})"
        ) from None
    return fn


class _Layer(torch.nn.Module):
    """What the attention functions read from the layer that calls them."""

    def __init__(self, groups: int, is_causal: bool):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, is_causal
        self.train(False)


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"transformers": "TransformersBackend"}


class TransformersBackend(Backend):
    name = "transformers"
    clauses = ("sdpa", "sdpa.scale", "sdpa.gqa", "sdpa.mask", "sdpa.causal.top_left")
    dtypes = ("float64", "float32", "float16", "bfloat16")
    devices = ("cpu", "cuda")
    default_variant = "sdpa"

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant not in (None, *VARIANTS):
            raise BackendError(f"transformers backend variant must be one of {VARIANTS}; got {variant!r}")
        self.variant = variant or self.default_variant
        self.attention = _functions(self.variant)
        self.name = f"transformers:{self.variant}"
        import transformers

        self.version = transformers.__version__

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def sdpa(self, q, k, v, *, scale=None, causal=None, mask=None):
        for name, x in (("q", q), ("k", k), ("v", v)):
            _checks.dims(name, arrays.tensor(name, x), 4)
        _checks.same_dtype(q=q, k=k, v=v)
        h_kv, n_k = _checks.kv_shapes(q, k, v)
        b, h_q, n_q, d = q.shape
        causal = _checks.causal(causal)
        if causal == "bottom_right":
            raise Unsupported("causal='bottom_right': the functions' is_causal is top-left")
        scale = d**-0.5 if scale is None else _checks.finite_float("scale", scale)
        visible = None
        if mask is not None:
            if not torch.is_tensor(mask) or mask.dtype != torch.bool:
                raise TypeError("mask must be a boolean tensor (True = may attend)")
            _checks.broadcastable("mask", arrays.stand_in(mask), (b, h_q, n_q, n_k))
            visible = mask.expand(b, h_q, n_q, n_k)
        layer = _Layer(h_q // h_kv, causal is not None)
        if self.variant == "sdpa":
            if visible is not None and causal is not None:
                raise Unsupported("a mask with is_causal: sdpa_attention_forward drops is_causal when given a mask")
            out, _ = self.attention(layer, q, k, v, visible, scaling=scale, is_causal=causal is not None)
        else:
            if causal is not None:
                tril = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
                visible = tril.expand(b, h_q, n_q, n_k) if visible is None else visible & tril
            additive = None
            if visible is not None:  # transformers' eager masks: 0 where visible, the dtype's minimum elsewhere
                additive = torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(
                    ~visible, torch.finfo(q.dtype).min
                )
            out, _ = self.attention(layer, q, k, v, additive, scaling=scale)
        return out.transpose(1, 2)


class TransformersEagerBackend(TransformersBackend):
    """``transformers:eager`` under a name of its own, for ``--backend=package.module:object``."""

    default_variant = "eager"
