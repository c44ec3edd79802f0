"""Multi-head attention with projections in float64 (clause ``mha``)."""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic
from attnspec.reference.sdpa import sdpa


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """``(B, N, H * D)`` -> ``(B, H, N, D)``; column ``h * D + d`` is channel ``d`` of head ``h``."""
    b, n, width = x.shape
    return x.reshape(b, n, heads, width // heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """``(B, H, N, D)`` -> ``(B, N, H * D)``, the inverse of :func:`split_heads`."""
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)


@reference("mha")
def mha(
    x_q,
    x_kv,
    *,
    w_q,
    w_k,
    w_v,
    w_o,
    num_heads: int,
    num_kv_heads: int | None = None,
    arithmetic: Arithmetic = EXACT,
    **options,
):
    """Clause ``mha``: ``merge_heads(sdpa(split(x_q @ w_q), split(x_kv @ w_k), split(x_kv @ w_v))) @ w_o``."""
    x_q = check.float_array("x_q", x_q, ndim=3)
    x_kv = check.float_array("x_kv", x_kv, ndim=3)
    heads = check.integer("num_heads", num_heads, low=1)
    kv_heads = heads if num_kv_heads is None else check.integer("num_kv_heads", num_kv_heads, low=1)
    if heads % kv_heads:  # checked here: sdpa would report it as q.shape[1] and k.shape[1]
        raise ValueError(f"num_heads = {heads} must be a multiple of num_kv_heads = {kv_heads} (sdpa.gqa)")
    if x_kv.shape[0] != x_q.shape[0] or x_kv.shape[2] != x_q.shape[2]:
        raise ValueError(
            f"x_kv must be (B, N_k, d_model) with x_q's B and d_model {x_q.shape[0], x_q.shape[2]}; got {x_kv.shape}"
        )
    d_model = x_q.shape[2]
    w_q, w_k, w_v, w_o = (
        check.float_array(n, w, ndim=2) for n, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o))
    )
    d_qk = _head_dim("w_q", w_q, d_model, heads)
    if _head_dim("w_k", w_k, d_model, kv_heads) != d_qk:
        raise ValueError(
            f"w_k must be (d_model, num_kv_heads * D_qk) = ({d_model}, {kv_heads * d_qk}); got {w_k.shape}"
        )
    d_v = _head_dim("w_v", w_v, d_model, kv_heads)
    if w_o.shape[0] != heads * d_v:
        raise ValueError(f"w_o must have num_heads * D_v = {heads * d_v} rows; got {w_o.shape}")
    if "return_lse" in options:
        raise ValueError("mha takes no return_lse: it returns the projected output only; call sdpa for the LSE")
    project = _projection(arithmetic)
    o = sdpa(
        split_heads(project(x_q, w_q), heads),
        split_heads(project(x_kv, w_k), kv_heads),
        split_heads(project(x_kv, w_v), kv_heads),
        arithmetic=arithmetic,
        **options,
    )
    return project(merge_heads(o), w_o)


def _projection(arithmetic: Arithmetic):
    """``x @ w`` in the compute dtype, rounded to the storage dtype (a library matmul, not sequential)."""

    def project(x, w):
        return arithmetic.round(x.astype(arithmetic.compute) @ w.astype(arithmetic.compute))

    return project


def _head_dim(name: str, w: np.ndarray, d_model: int, heads: int) -> int:
    if w.shape[0] != d_model or w.shape[1] % heads or w.shape[1] == 0:
        raise ValueError(
            f"{name} must be (d_model, heads * D) with d_model = {d_model} and a width divisible "
            f"by {heads} heads; got {w.shape}"
        )
    return w.shape[1] // heads
