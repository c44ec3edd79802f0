"""Clause ``sparse.block_sparse.grad``: the backward pass of ``sparse`` in float64.

``sparse`` is ``sdpa`` with the pattern's mask table (clause ``sparse``), so its gradient is
``sdpa.grad`` with that mask: the closed form of :mod:`.sdpa_grad`, which gives hidden keys and
rows without keys exactly zero gradient. Computed for every pattern; only ``block_sparse`` is a
clause. With an :class:`Arithmetic` that rounds to a dtype it is the naive same-precision backward.
"""

from __future__ import annotations

import numpy as np

from attnspec.clauses import reference
from attnspec.reference import sdpa_grad
from attnspec.reference.arithmetic import EXACT, Arithmetic
from attnspec.reference.sdpa import prepare
from attnspec.reference.sparse import _check_extents, build, table


@reference("sparse_backward")
def sparse_backward(
    q, k, v, dout, *, pattern: str, scale=None, arithmetic: Arithmetic = EXACT, **params
) -> tuple[np.ndarray, ...]:
    """``(dq, dk, dv)`` of ``sum(sparse(q, k, v, pattern=pattern, scale=scale, **params) * dout)``."""
    return sdpa_grad.sdpa_backward(
        q, k, v, dout, arithmetic=arithmetic, **dense_options(q, k, v, pattern, scale, params)
    )


def dense_options(q, k, v, pattern: str, scale, params: dict) -> dict:
    """The ``sdpa`` options equal to the sparse call: ``scale`` and the pattern's checked mask table."""
    problem = prepare(q, k, v, scale=scale)
    pat = build(pattern, problem.n_q, problem.n_k, **params)
    _check_extents(pat, problem.batch, problem.h_q)
    return {"scale": scale, "mask": table(pat.mask_mod, pat.batch, pat.heads, problem.n_q, problem.n_k)}
