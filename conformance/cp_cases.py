"""Cases for context-parallel attention (clauses ``cp.*``): one sequence, sharded by a layout.

The arrays are an ``sdpa`` case's (:class:`~attnspec.conformance.cases.SdpaCase`, ``N_q = N_k = N``)
cut into the layout's shards by the reference's position map; the expected result never goes
through the shards: it is ``sdpa`` on the whole sequence, then cut the same way. World sizes 1 to
the backend's ``max_world_size`` (4 if it declares none); zigzag shards of even length; lengths
drawn at the shard and chunk boundaries (one before, at, one after) as well as anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from hypothesis import strategies as st

from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.paged_cases import GARBAGE
from attnspec.conformance.target import current
from attnspec.reference import cp as reference_cp

#: The world size the suite goes up to when a backend does not declare ``max_world_size``.
MAX_WORLD_SIZE = 4
#: The longest shard drawn: ``N = P * C <= 4 * 16``.
MAX_SHARD = 16


def max_world_size() -> int:
    return getattr(current().backend, "max_world_size", None) or MAX_WORLD_SIZE


def declared_layouts() -> list[str]:
    """The layouts whose clause the backend declares (``contiguous`` if none: the default)."""
    declared = current().backend.declared
    return [x for x in reference_cp.LAYOUTS if f"cp.layout.{x}" in declared] or ["contiguous"]


def declared_schemes() -> list[str]:
    """The schemes whose clause the backend declares (``ring`` if none: the default)."""
    declared = current().backend.declared
    return [x for x in reference_cp.SCHEMES if f"cp.{x}" in declared] or ["ring"]


@dataclass(frozen=True)
class CpCase:
    """One ``context_parallel`` call. ``layout`` / ``scheme`` None: the first the backend declares."""

    world_size: int = 2
    batch: int = 1
    h_q: int = 2
    h_kv: int = 2
    shard_len: int = 4
    d_qk: int = 8
    d_v: int = 8
    seed: int = 0
    layout: str | None = None
    scheme: str | None = None
    causal: str | None = None
    seq_lens: tuple[int, ...] | None = None
    scale: float | None = None
    poison: str | None = None  # "nan" or "large" (1e4) in q, k and v at every position past seq_lens

    def with_(self, **changes) -> CpCase:
        return replace(self, **changes)

    @property
    def n(self) -> int:
        return self.world_size * self.shard_len

    def resolved(self, fit_heads: bool = True) -> CpCase:
        """The case with ``layout`` and ``scheme`` filled in for the backend under test; for Ulysses
        (a pinned example written for the ring), ``H_kv`` rounded up to a multiple of ``P``."""
        case = replace(self, layout=self.layout or declared_layouts()[0], scheme=self.scheme or declared_schemes()[0])
        if fit_heads and case.scheme == "ulysses" and case.h_kv % case.world_size:
            h_kv = -(-case.h_kv // case.world_size) * case.world_size
            case = replace(case, h_kv=h_kv, h_q=h_kv * (case.h_q // case.h_kv))
        return case

    def sdpa_case(self) -> SdpaCase:
        return SdpaCase(
            batch=self.batch,
            h_q=self.h_q,
            h_kv=self.h_kv,
            n_q=self.n,
            n_k=self.n,
            d_qk=self.d_qk,
            d_v=self.d_v,
            seed=self.seed,
            scale=self.scale,
            causal=self.causal,
            q_lens=self.seq_lens,
            kv_lens=self.seq_lens,
        )

    def positions(self) -> np.ndarray:
        return reference_cp.positions(self.layout or "contiguous", self.world_size, self.shard_len)

    def inputs(self, dtype: str):
        """``(q, k, v, options, gathered)``: the shards ``(P, B, H, C, D)`` and the call's options;
        ``gathered`` is ``(q, k, v, sdpa_options)`` of the whole clean sequence, for the reference."""
        q, k, v, sdpa_options = self.sdpa_case().inputs(dtype)
        pos = self.positions()
        shards = [reference_cp.shard(x, pos) for x in (q, k, v)]
        if self.poison and self.seq_lens is not None:
            past = pos[:, None, None, :] >= np.asarray(self.seq_lens)[None, :, None, None]  # (P, B, 1, C)
            garbage = rounded(np.array(GARBAGE[self.poison]), dtype)
            shards = [np.where(past[..., None], garbage.astype(x.dtype), x) for x in shards]
        options: dict = dict(layout=self.layout, scheme=self.scheme, scale=self.scale, causal=self.causal)
        if self.seq_lens is not None:
            options["seq_lens"] = np.asarray(self.seq_lens, np.int32)
        return (*shards, options, (q, k, v, sdpa_options))


def boundary_lens(n: int, shard_len: int, world_size: int) -> st.SearchStrategy[int]:
    """A length at a shard or zigzag-chunk boundary, one before or one after it, or anywhere."""
    unit = max(shard_len // 2, 1)
    edges = sorted({min(max(e + d, 0), n) for e in range(0, n + 1, unit) for d in (-1, 0, 1)})
    return st.one_of(st.sampled_from(edges or [0]), st.integers(0, n))


@st.composite
def cp_cases(
    draw,
    *,
    layouts: tuple[str, ...] | None = None,
    schemes: tuple[str, ...] | None = None,
    causal: bool | None = None,
    lengths: bool | None = None,
    min_world: int = 1,
    poison: bool = False,
) -> CpCase:
    """A case over the declared layouts and schemes (or those given); ``causal`` / ``lengths`` None: drawn."""
    layout = draw(st.sampled_from(layouts or declared_layouts()), label="layout")
    scheme = draw(st.sampled_from(schemes or declared_schemes()), label="scheme")
    world = draw(st.integers(min(min_world, max_world_size()), max_world_size()), label="world_size")
    if layout == "zigzag":
        shard_len = 2 * draw(st.integers(0, MAX_SHARD // 2), label="chunk")
    else:
        shard_len = draw(st.integers(0, MAX_SHARD), label="shard_len")
    if scheme == "ulysses":
        h_kv = world * draw(st.integers(1, 2), label="kv_heads_per_rank")
    else:
        h_kv = draw(st.sampled_from([1, 2, 3]), label="h_kv")
    group = draw(st.sampled_from([1, 2]), label="group")
    batch = draw(st.integers(1, 2), label="batch")
    n = world * shard_len
    is_causal = draw(st.booleans(), label="causal") if causal is None else causal
    if lengths is None:  # drawn where the backend declares them: a backend without lengths still gets cases
        lengths = None if "cp.lengths" in current().backend.declared else False
    has_lens = draw(st.booleans(), label="lengths") if lengths is None else lengths
    seq_lens = None
    if has_lens:
        seq_lens = tuple(draw(st.lists(boundary_lens(n, shard_len, world), min_size=batch, max_size=batch)))
    d_qk = draw(st.sampled_from([1, 8, 16]), label="d_qk")
    return CpCase(
        world_size=world,
        batch=batch,
        h_q=h_kv * group,
        h_kv=h_kv,
        shard_len=shard_len,
        d_qk=d_qk,
        d_v=draw(st.sampled_from([d_qk, 8, 5]), label="d_v"),  # D_v = D_qk as in most models, and others
        seed=draw(st.integers(0, 2**16), label="seed"),
        layout=layout,
        scheme=scheme,
        causal=draw(st.sampled_from(["top_left", "bottom_right"])) if is_causal else None,
        seq_lens=seq_lens,
        scale=draw(st.sampled_from([None, None, 0.3]), label="scale"),
        poison=draw(st.sampled_from(sorted(GARBAGE)), label="poison") if poison and has_lens else None,
    )
