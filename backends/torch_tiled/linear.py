"""Chunked linear attention in PyTorch operations (clauses ``linear.*``), on CPU or CUDA.

The chunked form of :mod:`attnspec.linear`: within a chunk of ``C`` tokens the masked quadratic
product, between chunks the carried state ``(S, z)``, so memory is ``O(N D + F D_v + C^2)`` per
head. Features, state and sums are kept in float32 (float64 for float64 inputs), as
flash-linear-attention keeps its state; the output is cast back to the input dtype.
"""

from __future__ import annotations

import numpy as np
import torch

from attnspec import validation as _checks
from attnspec.backends import _torch_arrays as arrays
from attnspec.contract import Unsupported
from attnspec.reference import linear as reference_linear


def linear_attention(
    q,
    k,
    v,
    *,
    feature_map="elu+1",
    causal=False,
    form="parallel",
    chunk_size=None,
    normalize=True,
    scale=1.0,
    eps=0.0,
    initial_state=None,
    initial_normalizer=None,
    output_final_state=False,
):
    check_arguments(
        q,
        k,
        v,
        feature_map=feature_map,
        causal=causal,
        form=form,
        chunk_size=chunk_size,
        normalize=normalize,
        scale=scale,
        eps=eps,
        initial_state=initial_state,
        initial_normalizer=initial_normalizer,
        output_final_state=output_final_state,
    )
    if form != "chunked":  # after the checks: an invalid call is an error in every form
        raise Unsupported(f"form={form!r}: the torch backend implements the chunked form only")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    fq = _phi(q.to(acc), feature_map) * scale
    fk = _phi(k.to(acc), feature_map)
    v = v.to(acc)
    state = _initial(initial_state, (*k.shape[:2], k.shape[3], v.shape[3]), acc, q.device)
    normalizer = _initial(initial_normalizer, (*k.shape[:2], k.shape[3]), acc, q.device)
    num = torch.full((*q.shape[:3], v.shape[3]), float("nan"), dtype=acc, device=q.device)  # unwritten rows show
    den = torch.full(q.shape[:3], float("nan"), dtype=acc, device=q.device)
    n = k.shape[2]
    for c0 in range(0, n, chunk_size):
        c = slice(c0, min(c0 + chunk_size, n))
        fk_c, v_c = fk[:, :, c], v[:, :, c]
        if causal:
            a = torch.tril(fq[:, :, c] @ fk_c.transpose(-1, -2))  # the diagonal is included
            num[:, :, c] = fq[:, :, c] @ state + a @ v_c
            den[:, :, c] = (fq[:, :, c] @ normalizer[..., None])[..., 0] + a.sum(dim=-1)
        state = state + fk_c.transpose(-1, -2) @ v_c
        normalizer = normalizer + fk_c.sum(dim=-2)
    if not causal:  # every key is in the state before any query reads it
        num = fq @ state
        den = (fq @ normalizer[..., None])[..., 0]
    out = _finish(num, den, normalize=normalize, eps=eps).to(q.dtype)
    return (out, state, normalizer) if output_final_state else out


def check_arguments(q, k, v, *, initial_state, initial_normalizer, **options) -> None:
    """The reference's argument checks and errors, on zero-stride stand-ins for q, k, v (no copy)."""
    tensors = {name: arrays.tensor(name, x) for name, x in (("q", q), ("k", k), ("v", v))}
    _checks.same_dtype(**tensors)
    stand_in = [arrays.stand_in(x) for x in tensors.values()]
    given = {"initial_state": initial_state, "initial_normalizer": initial_normalizer}
    host = [
        None if x is None else arrays.to_numpy(arrays.tensor(name, x)).astype(np.float64) for name, x in given.items()
    ]
    reference_linear.validate(*stand_in, initial_state=host[0], initial_normalizer=host[1], **options)


def _initial(given, shape, dtype, device):
    """The carried-in sum, or zeros when none is given (clause ``linear.state``)."""
    return torch.zeros(shape, dtype=dtype, device=device) if given is None else given.to(dtype)


def _phi(x: torch.Tensor, name: str) -> torch.Tensor:
    """Clause ``linear.feature_map``; ``elu+1`` as ``x + 1`` above 0 and ``exp(x)`` below (no cancellation)."""
    if name == "relu":
        return torch.relu(x)
    if name == "identity":
        return x
    return torch.where(x > 0, x + 1, torch.exp(torch.clamp(x, max=0)))


def _finish(num, den, *, normalize: bool, eps: float):
    """Clause ``linear.normalizer``: ``num / (den + eps)``, exactly 0 where ``den + eps == 0``."""
    if not normalize:
        return num
    den = den + eps
    zero = den == 0
    return torch.where(
        zero[..., None],
        torch.zeros((), dtype=num.dtype, device=num.device),
        num / torch.where(zero, torch.ones_like(den), den)[..., None],
    )
