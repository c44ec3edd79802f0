"""The variants the scaling report measures, with the exponents their definitions imply.

A :class:`Variant` builds inputs of sequence length ``N`` and names the backend operation and
the clause a backend must declare to be measured. Head counts and dims stay fixed and small so
that ``N`` alone drives the cost. Add a variant here with every family whose cost claim
(quadratic, linear in the visible pairs, linear in N) the report should show.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

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


def _sparse(pattern):
    from attnspec.conformance.sparse_cases import budgeted_params

    return lambda n, rng: (qkv(n, rng), {"pattern": pattern, **budgeted_params(pattern, n, heads=H)})


def _budgeted_patterns() -> tuple[str, ...]:
    """The sparse patterns registered with a fixed budget of keys per query (linear cost)."""
    from attnspec.conformance.sparse_cases import BUDGETED

    return BUDGETED


def _hierarchical(n, rng):
    """NSA, routing and LSH inputs: one KV head, two query heads (NSA shares selection per group)."""
    q, k, v = (rng.standard_normal((B, h, n, D)) for h in (2, 1, 1))
    return q, k, v


def _nsa(n, rng):
    q, k, v = _hierarchical(n, rng)
    blocking = dict(cmp_len=32, cmp_stride=16, sel_len=64, top_n=4, init_blocks=1, local_blocks=1)
    return (q, k, v), {"gates": rng.uniform(0, 1, (B, 2, n, 3)), "window": WINDOW, **blocking}


def _routed(assign: bool):
    def build(n, rng):
        q, k, v = _hierarchical(n, rng)
        centroids = rng.standard_normal((2, 8, D))
        return ((q, k), {"centroids": centroids}) if assign else ((q, k, v), {"centroids": centroids})

    return build


def _lsh(buckets: bool):
    def build(n, rng):
        qk, _, v = _hierarchical(n, rng)
        rotations = rng.standard_normal((2, D, 4))
        if buckets:
            return (qk[:, :1],), {"rotations": rotations}
        return (qk[:, :1], v), {"rotations": rotations, "chunk_len": 32, "causal": True}

    return build


def _linear(form, causal=True, **extra):
    return lambda n, rng: (qkv(n, rng), {"form": form, "causal": causal, **extra})


def _performer(n, rng):
    return qkv(n, rng), {"projection": rng.standard_normal((256, D)), "causal": True}


def _retention(form, **extra):
    return lambda n, rng: (qkv(n, rng), {"gammas": np.full(H, 0.97), "form": form, **extra})


def _linformer(n, rng):
    e, f = (rng.standard_normal((WINDOW, n)) / np.sqrt(n) for _ in range(2))
    return qkv(n, rng), {"e": e, "f": f}


def _xl_attention(n, rng):
    memory_k, memory_v, _ = qkv(n, rng)
    return qkv(n, rng), {"mem_k": memory_k, "mem_v": memory_v}


VARIANTS: list[Variant] = [
    Variant("sdpa dense", "sdpa", "sdpa", 2, 2, _sdpa()),
    Variant("sdpa causal", "sdpa", "sdpa.causal.bottom_right", 2, 2, _sdpa(causal="bottom_right")),
    Variant("flash tiled", "flash_forward", "flash.tiled", 2, 1, _flash()),
    Variant(f"flash tiled, window {WINDOW}", "flash_forward", "sdpa.window", 1, 1, _flash(window=(WINDOW - 1, 0))),
    Variant("decode, 1 query", "decode", "flash.decode", 1, 1, _decode),
    *[Variant(f"sparse {p}", "sparse", f"sparse.{p}", 1, 1, _sparse(p)) for p in _budgeted_patterns()],
    Variant(
        "sparse strided, stride sqrt(N)",
        "sparse",
        "sparse.strided",
        1.5,
        1,
        lambda n, rng: (qkv(n, rng), {"pattern": "strided", "stride": math.isqrt(n)}),
    ),
    # The NSA, routing and LSH references are dense-mask oracles (quadratic by design); the
    # discrete parts a kernel must match exactly (selection, assignment, buckets) are linear.
    Variant("nsa (dense oracle)", "nsa", "nsa.combine", 2, 2, _nsa),
    Variant("routed (dense oracle)", "routed", "routed", 2, 2, _routed(assign=False)),
    Variant("routed assign", "routed_assign", "routed.assign", 1, 1, _routed(assign=True)),
    Variant("lsh (dense oracle)", "lsh", "lsh.chunks", 2, 2, _lsh(buckets=False)),
    Variant("lsh buckets", "lsh_buckets", "lsh.buckets", 1, 1, _lsh(buckets=True)),
    Variant("linear parallel, causal", "linear_attention", "linear.parallel", 2, 2, _linear("parallel")),
    Variant("linear recurrent, causal", "linear_attention", "linear.recurrent", 1, 1, _linear("recurrent")),
    Variant(
        f"linear chunked, causal, chunk {WINDOW}",
        "linear_attention",
        "linear.chunked",
        1,
        1,
        _linear("chunked", chunk_size=WINDOW),
    ),
    Variant(
        f"linear chunked, chunk {WINDOW}",
        "linear_attention",
        "linear.chunked",
        1,
        1,
        _linear("chunked", causal=False, chunk_size=WINDOW),
    ),
    Variant("efficient attention", "efficient_attention", "linear.efficient", 1, 1, lambda n, rng: (qkv(n, rng), {})),
    Variant("performer, 256 features, causal", "performer", "performer", 1, 1, _performer),
    Variant("retention parallel", "retention", "retention.parallel", 2, 2, _retention("parallel")),
    Variant("retention recurrent", "retention", "retention.recurrent", 1, 1, _retention("recurrent")),
    Variant(
        f"retention chunkwise, chunk {WINDOW}",
        "retention",
        "retention.chunkwise",
        1,
        1,
        _retention("chunkwise", chunk_size=WINDOW),
    ),
    Variant(f"linformer, k = {WINDOW}", "linformer", "linformer", 1, 1, _linformer),
    Variant("xl attention, memory N", "xl_attention", "xl.memory", 2, 2, _xl_attention),
    Variant(
        f"xl recurrent, segment {WINDOW}",
        "xl_recurrent",
        "xl.recurrence",
        1,
        1,
        lambda n, rng: (qkv(n, rng), {"segment_len": WINDOW, "mem_len": WINDOW}),
    ),
]
