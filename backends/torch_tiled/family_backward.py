"""The families' backward passes on the ``torch`` backend (clauses ``linear.grad``,
``retention.grad``, ``sparse.block_sparse.grad``).

Linear attention and retention: ``torch.autograd`` through a chunked forward (the backend's own
chunked linear attention; the chunkwise retention of :func:`chunkwise_retention`, written for
this), which is what a training loop with those kernels computes; every form is one function, so
the parallel and recurrent forms of retention run as one chunk and as chunks of one token.
Block-sparse attention: the explicit FlashAttention-2 backward of :mod:`.backward` with the
layout's mask table, so masked tiles are skipped or zeroed exactly as in ``sdpa_backward``.
"""

from __future__ import annotations

import torch

from attnspec.backends import _torch_arrays as arrays
from attnspec.backends._torch_autograd import autograd
from attnspec.backends.torch_tiled import backward, kernel
from attnspec.backends.torch_tiled import linear as chunked_linear
from attnspec.reference import retention as reference_retention
from attnspec.reference import sparse as reference_sparse


def linear_attention_backward(q, k, v, dout, *, initial_state=None, initial_normalizer=None, **options):
    """Clause ``linear.grad``: autograd through the chunked form (other forms are declined by it)."""
    inputs = dict(q=q, k=k, v=v, initial_state=initial_state, initial_normalizer=initial_normalizer)
    return autograd(chunked_linear.linear_attention, inputs, dout, **options)


def retention_backward(q, k, v, dout, *, gammas, form="parallel", chunk_size=None, scale=None, initial_state=None):
    """Clause ``retention.grad``: autograd through :func:`chunkwise_retention`, the reference's checks first."""
    form, chunk_size = reference_retention.check_form(form, chunk_size)
    host = {"gammas": arrays.host(gammas), "initial_state": None}
    if initial_state is not None:
        host["initial_state"] = arrays.stand_in(arrays.tensor("initial_state", initial_state))
    stand_in = [arrays.stand_in(arrays.tensor(name, x)) for name, x in (("q", q), ("k", k), ("v", v))]
    checked = reference_retention.prepare(*stand_in, scale=scale, **host)
    n = q.shape[2]
    chunk = {"parallel": max(n, 1), "recurrent": 1}.get(form, chunk_size)
    gammas = torch.as_tensor(checked.gammas, device=q.device)
    inputs = dict(q=q, k=k, v=v, state=initial_state)
    return autograd(chunkwise_retention, inputs, dout, gammas=gammas, scale=checked.scale, chunk_size=chunk)


def chunkwise_retention(q, k, v, *, gammas, scale: float, chunk_size: int, state=None) -> torch.Tensor:
    """Clause ``retention.chunkwise`` in float32 (float64 for float64 inputs), the output in the input dtype."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, h, n, d_k = q.shape
    state = torch.zeros((b, h, d_k, v.shape[-1]), dtype=acc, device=q.device) if state is None else state.to(acc)
    log_g = torch.log(gammas.to(acc))[:, None]  # (H, 1); -inf for g = 0, which never meets e = 0 below
    outs = []
    for c0 in range(0, n, chunk_size):
        q_c, k_c, v_c = (x[:, :, c0 : c0 + chunk_size].to(acc) for x in (q, k, v))
        pos = torch.arange(q_c.shape[2], device=q.device, dtype=acc)
        decay = torch.where(pos[:, None] >= pos[None, :], _powers(log_g[..., None], pos[:, None] - pos[None, :]), 0)
        scores = (q_c @ k_c.transpose(-1, -2)) * scale * decay
        outs.append(scores @ v_c + scale * _powers(log_g, pos + 1)[..., None] * (q_c @ state))
        length = torch.tensor([float(q_c.shape[2])], dtype=acc, device=q.device)
        decayed_v = v_c * _powers(log_g, length - 1 - pos)[..., None]
        state = _powers(log_g, length)[..., None] * state + k_c.transpose(-1, -2) @ decayed_v
    return torch.cat(outs, dim=2).to(q.dtype)


def _powers(log_g: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``g^e`` as ``exp(e log g)`` for ``e >= 0``, exactly 1 at ``e = 0`` (``0^0 = 1``), 0 where ``e < 0``."""
    e = e.clamp(min=0)
    return torch.where(e == 0, 1.0, torch.exp(torch.where(e == 0, 0.0, e * log_g)))


def sparse_backward(backend, q, k, v, dout, *, pattern, scale=None, **params) -> tuple[torch.Tensor, ...]:
    """Clause ``sparse.block_sparse.grad``: ``sdpa.grad`` (the tiled backward) with the layout's mask table."""
    pat = backend.block_sparse_pattern(pattern, q.shape[2], k.shape[2], params)
    reference_sparse._check_extents(pat, q.shape[0], q.shape[1])
    table = backend.sparse_mask(pattern, q.shape[2], k.shape[2], **params)
    problem = kernel.prepare(q, k, v, scale=scale, mask=table, steps=backend.steps)
    grads = backward.backward(problem, dout, None, backend.block_k)
    return tuple(grad.to(x.dtype) for grad, x in zip(grads, (q, k, v), strict=True))
