"""The variants the scaling report measures, with the exponents their definitions imply.

A :class:`Variant` builds inputs of sequence length ``N`` and names the backend operation and
the clause a backend must declare to be measured. Head counts and dims stay fixed and small so
that ``N`` alone drives the cost. Add a variant here with every family whose cost claim
(quadratic, linear in the visible pairs, linear in N) the report should show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

B, H, D = 1, 1, 32
WINDOW = 64  # keys per query for the windowed and block variants: constant in N


@dataclass(frozen=True)
class Variant:
    name: str
    op: str
    clause: str
    expected_time: float
    expected_memory: float
    build: Callable[[int, np.random.Generator], tuple[tuple, dict]] = field(repr=False)


def qkv(n: int, rng: np.random.Generator, *, n_q: int | None = None, d: int = D):
    q = rng.standard_normal((B, H, n if n_q is None else n_q, d))
    k = rng.standard_normal((B, H, n, d))
    v = rng.standard_normal((B, H, n, d))
    return q, k, v


def _sdpa(**options):
    return lambda n, rng: (qkv(n, rng), options)


def _flash(**options):
    return lambda n, rng: (qkv(n, rng), {"block_q": 128, "block_k": 128, **options})


def _decode(n, rng):
    q, k, v = qkv(n, rng, n_q=1)
    return (q, k, v), {"cache_lens": np.array([n]), "num_splits": 4}


VARIANTS: list[Variant] = [
    Variant("sdpa dense", "sdpa", "sdpa", 2, 2, _sdpa()),
    Variant("sdpa causal", "sdpa", "sdpa.causal.bottom_right", 2, 2, _sdpa(causal="bottom_right")),
    Variant("flash tiled", "flash_forward", "flash.tiled", 2, 1, _flash()),
    Variant(f"flash tiled, window {WINDOW}", "flash_forward", "sdpa.window", 1, 1,
            _flash(window=(WINDOW - 1, 0))),
    Variant("decode, 1 query", "decode", "flash.decode", 1, 1, _decode),
]
