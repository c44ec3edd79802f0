"""``flex``: PyTorch's FlexAttention, compiled, as a backend under test (CUDA).

Every spec option becomes FlexAttention's own vocabulary: causal, window, padding and boolean
masks are one ``mask_mod`` turned into a ``BlockMask`` (fully masked blocks are skipped by the
kernel); softcap, bias and ALiBi are one ``score_mod``, applied by Flex after its scale. The LSE
comes from ``return_lse=True``. Both are :mod:`._torch_visibility`'s index functions, traced. The
compiled kernel is always used: its recompile limit is raised (for this compiled function only, see
:func:`._torch_compile.compile_with_limit`) so that Dynamo never falls back to eager execution,
which would test a different implementation.

Variants: ``flex`` compiles for static shapes (one compile per shape, seconds each: what the
benchmark times, and what the GPU conformance run checks, with ``--shapes=menu`` and xdist workers);
``flex:dynamic`` compiles with ``dynamic=True`` (one compile per structure rather than per shape; on
PyTorch 2.11 it fails to compile causal masks: ``docs/results/2026-11-22-conformance-flex-dynamic-h100.md``).
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from attnspec import validation as _checks
from attnspec.backends import SDPA_FORWARD_CLAUSES, _torch_autograd
from attnspec.backends import _torch_arrays as arrays
from attnspec.backends import _torch_visibility as vis
from attnspec.backends._torch_compile import compile_with_limit, recompiles_up_to
from attnspec.contract import Backend, BackendError, Unsupported

_DYNAMIC = {None: False, "dynamic": True}  # variant -> torch.compile(dynamic=)
_FLEX: dict = {}  # variant -> flex_attention compiled, by the first backend constructed for it
#: recompiles allowed to the compiled flex_attention and BlockMask builder: one per shape, never eager
RECOMPILE_LIMIT = 100_000


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"flex": "FlexBackend"}


class FlexBackend(Backend):
    name = "flex"
    clauses = SDPA_FORWARD_CLAUSES + ("sdpa.window.top_left",)
    clauses += ("sdpa.grad", "sdpa.grad.*")  # through autograd of the compiled kernel
    dtypes = ("float32", "float16", "bfloat16")
    devices = ("cuda", "cpu")

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant not in _DYNAMIC:
            raise BackendError(f"flex backend variant must be 'dynamic' or none; got {variant!r}")
        if variant not in _FLEX:
            _FLEX[variant] = compile_with_limit(flex_attention, RECOMPILE_LIMIT, dynamic=_DYNAMIC[variant])
        self._flex = _FLEX[variant]
        if variant:
            self.name = f"flex:{variant}"
        if self.device == "cpu":  # Inductor's CPU FlexAttention has no return_lse (PyTorch 2.13)
            self.clauses = tuple(c for c in self.clauses if c != "sdpa.lse")

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def sdpa_backward(self, q, k, v, dout, **options):
        """Autograd through :meth:`sdpa`: FlexAttention's own backward kernel, the bias a captured leaf of ``score_mod``."""
        return _torch_autograd.backward(self.name, self.sdpa, q, k, v, dout, options)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def sdpa(
        self,
        q,
        k,
        v,
        *,
        return_lse=False,
        scale=None,
        causal=None,
        window=None,
        window_align=None,
        mask=None,
        bias=None,
        softcap=None,
        alibi_slopes=None,
        q_lens=None,
        kv_lens=None,
    ):
        top_left = _checks.window_align(window_align) == "top_left"
        score_mod = _score_mod(q, k, softcap, bias, alibi_slopes, q_lens, kv_lens)
        try:
            block_mask = _block_mask(q, k, causal, window, mask, q_lens, kv_lens, top_left)
            result = self._flex(
                q,
                k,
                v,
                score_mod=score_mod,
                block_mask=block_mask,
                scale=scale,
                enable_gqa=q.shape[1] != k.shape[1],
                return_lse=q.is_cuda,
            )
            out, lse = result if q.is_cuda else (result, None)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            if any(w in text.lower() for w in ("not supported", "unsupported", "must be", "requires")):
                raise Unsupported(f"flex: {text}") from None
            raise
        return (out, lse) if return_lse else out


_BLOCK_MASKS: dict = {}  # rules without tensors are the same BlockMask every call: build it once
#: up to this many (query, key) pairs the BlockMask is built by evaluating ``mask_mod`` eagerly, which
#: gives the same BlockMask as the compiled builder without a compile per test shape
_EAGER_MASK_PAIRS = 2**22


def _block_mask(q, k, causal, window, mask, q_lens, kv_lens, window_top_left=False):
    """The BlockMask of the visibility rules (compiled, never a dense B*H*N*N tensor), or None."""
    b, h_q, n_q, _ = q.shape
    n_k = k.shape[2]
    if not vis.restricts(causal, window, mask, q_lens, kv_lens):
        return None
    per_batch = q_lens is not None or kv_lens is not None or mask is not None
    q_l, kv_l = vis.lengths(q, k, q_lens, kv_lens)
    key = (
        None
        if mask is not None
        else (
            n_q,
            n_k,
            causal,
            window,
            window_top_left,
            b if per_batch else None,
            tuple(q_l.tolist()) if per_batch else None,
            tuple(kv_l.tolist()) if per_batch else None,
        )
    )
    if key is not None and key in _BLOCK_MASKS:
        return _BLOCK_MASKS[key]
    mask_mod = _mask_mod(q, k, causal, window, mask, q_l, kv_l, per_batch, window_top_left)
    batch, heads = b if per_batch else 1, h_q if mask is not None else 1
    with recompiles_up_to(RECOMPILE_LIMIT):
        block = create_block_mask(
            mask_mod,
            b if per_batch else None,
            h_q if mask is not None else None,
            n_q,
            n_k,
            device=q.device,
            _compile=batch * heads * n_q * n_k > _EAGER_MASK_PAIRS,
        )
    if key is not None:
        _BLOCK_MASKS[key] = block
    return block


def _mask_mod(q, k, causal, window, mask, q_lens, kv_lens, per_batch: bool, window_top_left: bool = False):
    """:meth:`Rules.visible <attnspec.backends._torch_visibility.Rules.visible>` as Flex's ``mask_mod``.

    Without ``per_batch`` it reads no per-item tensor (no padding; ``offset`` the constant
    ``N_k - N_q``), so that its cached BlockMask serves any batch size."""
    (b, h_q, n_q, _), n_k = q.shape, k.shape[2]
    # window sides go in as tensors: Dynamo would specialise (recompile) on each captured int
    left, right = (None if x is None else torch.tensor(x, device=q.device) for x in vis.window_sides(window))
    rules = vis.Rules(
        n_q,
        n_k,
        causal,
        left,
        right,
        mask=None if mask is None else mask.expand(b, h_q, n_q, n_k),
        window_top_left=window_top_left,
        **(dict(q_lens=q_lens, kv_lens=kv_lens) if per_batch else {}),
    )

    def mask_mod(b, h, q_idx, kv_idx):
        return rules.visible(b, h, q_idx, kv_idx)

    return mask_mod


def _score_mod(q, k, softcap, bias, alibi_slopes, q_lens, kv_lens):
    """:meth:`Rules.modify <attnspec.backends._torch_visibility.Rules.modify>` as Flex's ``score_mod``, or None."""
    if softcap is None and bias is None and alibi_slopes is None:
        return None
    (b, h_q, n_q, _), n_k = q.shape, k.shape[2]
    q_lens, kv_lens = vis.lengths(q, k, q_lens, kv_lens)
    # softcap as a tensor: a captured float would be specialised (a compile per value)
    cap = None if softcap is None else torch.tensor(softcap, dtype=torch.float32, device=q.device)
    rules = vis.Rules(
        n_q,
        n_k,
        q_lens=q_lens,
        kv_lens=kv_lens,
        softcap=cap,
        bias=None if bias is None else bias.expand(b, h_q, n_q, n_k),
        slopes=None if alibi_slopes is None else alibi_slopes.to(torch.float32).expand(b, h_q),
    )

    def score_mod(score, b, h, q_idx, kv_idx):
        return rules.modify(score, b, h, q_idx, kv_idx)

    return score_mod
