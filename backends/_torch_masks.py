"""Spec options as the dense masks and biases that third-party PyTorch kernels take.

Adapters (``torch-sdpa``) express causal, window, padding and mask as one boolean
``attn_mask`` and bias plus ALiBi as one float ``attn_mask``, exactly as a user of those kernels
would; the kernel itself then decides what it can run.
"""

from __future__ import annotations

import torch


def lengths(q, k, q_lens, kv_lens):
    b, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    q_lens = torch.full((b,), n_q, device=q.device) if q_lens is None else q_lens.to(q.device, torch.int64)
    kv_lens = torch.full((b,), n_k, device=q.device) if kv_lens is None else kv_lens.to(q.device, torch.int64)
    return q_lens, kv_lens


def visibility(q, k, *, causal=None, window=None, mask=None, q_lens=None, kv_lens=None):
    """Boolean ``(B, H_q or 1, N_q, N_k)``, True where the key is visible, or None if all are."""
    if causal is None and window is None and mask is None and q_lens is None and kv_lens is None:
        return None
    n_q, n_k = q.shape[2], k.shape[2]
    ql, kl = lengths(q, k, q_lens, kv_lens)
    i = torch.arange(n_q, device=q.device)[None, :, None]
    j = torch.arange(n_k, device=q.device)[None, None, :]
    offsets = (kl - ql)[:, None, None]
    vis = (i < ql[:, None, None]) & (j < kl[:, None, None])
    if causal == "top_left":
        vis = vis & (j <= i)
    elif causal == "bottom_right":
        vis = vis & (j <= i + offsets)
    if window is not None:
        left, right = window
        if left >= 0:
            vis = vis & (j >= i + offsets - left)
        if right >= 0:
            vis = vis & (j <= i + offsets + right)
    vis = vis[:, None]
    if mask is not None:
        vis = vis & mask.to(q.device, torch.bool)
    return vis


def additive(q, k, *, bias=None, alibi_slopes=None, q_lens=None, kv_lens=None):
    """Float ``(B, H_q or 1, N_q, N_k)`` of bias plus ALiBi (bottom-right aligned), or None."""
    total, dtype = None, torch.promote_types(q.dtype, torch.float32)
    if bias is not None:
        total = bias.to(q.device, dtype)
    if alibi_slopes is not None:
        ql, kl = lengths(q, k, q_lens, kv_lens)
        i = torch.arange(q.shape[2], device=q.device)[None, :, None]
        j = torch.arange(k.shape[2], device=q.device)[None, None, :]
        distance = (i + (kl - ql)[:, None, None] - j).abs()[:, None].to(dtype)
        slopes = alibi_slopes.to(q.device, dtype).expand(q.shape[0], q.shape[1])[:, :, None, None]
        total = -slopes * distance if total is None else total - slopes * distance
    return total
