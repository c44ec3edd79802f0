"""Cases, input separation and strategies for the hierarchical and routed families.

A case is a frozen description whose repr is valid Python; :meth:`inputs` makes the arrays from
its seed, already rounded to the dtype. The discrete decisions (selected blocks, clusters,
buckets) are made on inputs *separated* for the dtype: wherever the two top-ranked values of a
decision are closer than twice the tolerance the policy allows for them (the margins of
:mod:`.hand_bounds`: 3x a naive implementation's measured error plus the floor), the
offending row or token is drawn again from the same stream. Exact ties of clusters and buckets
are left in on purpose: they are decided by the tie rule, which every precision reproduces. An
exact tie at an NSA selection boundary is drawn again too: ``nsa.select.ties`` has its own cases
(``q = 0``), so that a kernel with an unordered top-k can be checked on the other clauses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import NoReturn

import hypothesis
import numpy as np
from hypothesis import strategies as st

from attnspec.conformance.dtypes import rounded
from attnspec.conformance.hand_bounds import bucket_margin, projections, routing_margin, selection_margin, unit
from attnspec.conformance.target import current
from attnspec.reference.arithmetic import EXACT
from attnspec.reference.nsa import NSA
from attnspec.reference.routed import cosines

#: How often a row or token is drawn again before the case is given up (it never is in practice).
REDRAWS = 40


class _Case:
    def __repr__(self) -> str:
        """Valid Python that rebuilds the case: fields that differ from the defaults."""
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) != f.default]
        return f"{type(self).__name__}({', '.join(shown)})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))

    def with_(self, **changes):
        return replace(self, **changes)


def _normal(rng, shape, dtype: str) -> np.ndarray:
    return rounded(rng.standard_normal(shape), dtype)


def _gap(values: np.ndarray) -> np.ndarray:
    """Top value minus the next *different* value along the last axis (inf if none): exact ties are deliberate."""
    top = values.max(axis=-1, keepdims=True)
    below = np.where(values < top, values, -np.inf).max(axis=-1)
    return top[..., 0] - below


def _give_up(what: str) -> NoReturn:
    if hypothesis.currently_in_test_context():
        hypothesis.reject()
    raise RuntimeError(f"could not separate {what} within {REDRAWS} draws")


# NSA


@dataclass(frozen=True, repr=False)
class NsaCase(_Case):
    batch: int = 1
    h_q: int = 1
    h_kv: int = 1
    n_q: int = 16
    n_k: int = 16
    d_qk: int = 8
    d_v: int = 8
    seed: int = 0
    cmp_len: int = 4
    cmp_stride: int = 2
    sel_len: int = 4
    top_n: int = 2
    window: int = 4
    init_blocks: int = 0
    local_blocks: int = 0
    compress: str = "mean"  # "mean", "weights" (position weights (l,)) or "linear" ((l * D, D))
    gates: str = "random"  # "random", or one branch: "cmp", "slc", "win"
    zero_q: bool = False  # q = 0: every visible compressed block is equally probable (nsa.select.ties)
    scale: float | None = None

    def blocking(self) -> dict:
        return dict(
            cmp_len=self.cmp_len,
            cmp_stride=self.cmp_stride,
            sel_len=self.sel_len,
            top_n=self.top_n,
            init_blocks=self.init_blocks,
            local_blocks=self.local_blocks,
        )

    def inputs(self, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """``(q, k, v, kwargs)`` for ``nsa``; ``nsa_select`` takes the same minus v, gates, window, compress_v."""
        rng = np.random.default_rng(self.seed)
        q = _normal(rng, (self.batch, self.h_q, self.n_q, self.d_qk), dtype)
        if self.zero_q:
            q = np.zeros_like(q)
        k = _normal(rng, (self.batch, self.h_kv, self.n_k, self.d_qk), dtype)
        v = _normal(rng, (self.batch, self.h_kv, self.n_k, self.d_v), dtype)
        kwargs = dict(
            self.blocking(),
            window=self.window,
            scale=self.scale,
            gates=self._gates(rng, dtype),
            compress_k=self._weights(rng, self.d_qk, dtype),
            compress_v=self._weights(rng, self.d_v, dtype),
        )
        if not self.zero_q:
            q = separate_selection(q, k, kwargs, dtype, rng)
        return q, k, v, kwargs

    def _gates(self, rng, dtype: str) -> np.ndarray:
        shape = (self.batch, self.h_q, self.n_q, 3)
        if self.gates == "random":
            return rounded(rng.uniform(0.0, 1.0, shape), dtype)
        one_hot = np.zeros(3)
        one_hot[("cmp", "slc", "win").index(self.gates)] = 1.0
        return rounded(np.broadcast_to(one_hot, shape), dtype)

    def _weights(self, rng, dim: int, dtype: str):
        if self.compress == "mean":
            return None
        if self.compress == "weights":
            return rounded(rng.standard_normal(self.cmp_len) / np.sqrt(self.cmp_len), dtype)
        size = self.cmp_len * dim
        return rounded(rng.standard_normal((size, dim)) / np.sqrt(size), dtype)


def select_call(kwargs: dict) -> dict:
    """The keyword arguments of ``nsa_select`` among those of ``nsa``."""
    return {
        name: kwargs[name]
        for name in ("cmp_len", "cmp_stride", "sel_len", "top_n", "init_blocks", "local_blocks", "compress_k", "scale")
        if name in kwargs
    }


def selection_gap(problem: NSA, imp: np.ndarray) -> np.ndarray:
    """``(B, H_kv, N_q)``: importance of the last block chosen freely minus the first passed over
    (0 for an exact tie; inf where nothing is contested)."""
    cand = np.broadcast_to(problem.candidates(), imp.shape)
    key = np.where(np.broadcast_to(problem.forced(), imp.shape), np.inf, np.where(cand, imp, -np.inf))
    ranked = -np.sort(-key, axis=-1)
    if ranked.shape[-1] <= problem.top_n:
        return np.full(imp.shape[:-1], np.inf)
    last, first_out = ranked[..., problem.top_n - 1], ranked[..., problem.top_n]
    contested = np.isfinite(last) & np.isfinite(first_out)
    with np.errstate(invalid="ignore"):  # inf - inf where uncontested
        return np.where(contested, last - first_out, np.inf)


def separate_selection(q, k, kwargs: dict, dtype: str, rng) -> np.ndarray:
    """Redraw the queries of rows whose selection is decided by less than the margin, or by a tie."""
    q = q.copy()
    for _ in range(REDRAWS):
        problem = NSA.build(q, k, **select_call(kwargs))
        imp = problem.importance()
        close = selection_gap(problem, imp) <= selection_margin(problem, imp, dtype)  # (B, H_kv, N_q)
        if not close.any():
            return q
        rows = np.repeat(close, problem.group, axis=1)  # every query head of the group
        q[rows] = _normal(rng, (int(rows.sum()), q.shape[-1]), dtype)
    _give_up("the NSA selection")


# Routed attention


@dataclass(frozen=True, repr=False)
class RoutedCase(_Case):
    batch: int = 1
    h_q: int = 1
    h_kv: int = 1
    n_q: int = 16
    n_k: int = 16
    d_qk: int = 8
    d_v: int = 8
    seed: int = 0
    clusters: int = 3
    causal: str | None = None
    scale: float | None = None
    split: bool = False  # keys near one centroid, every other query near its opposite: rows with no key
    ties: bool = False  # centroids 0 and 1 equal, and every fifth token zero: decided by the tie rule

    def inputs(self, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """``(q, k, v, kwargs)`` for ``routed``; ``routed_assign`` takes q, k and the centroids."""
        rng = np.random.default_rng(self.seed)
        centroids = rng.standard_normal((self.h_q, self.clusters, self.d_qk))
        if self.split and self.clusters >= 2:
            axis = rng.standard_normal(self.d_qk)
            centroids[:, 0], centroids[:, 1] = axis, -axis
        if self.ties and self.clusters >= 2:
            centroids[:, 1] = centroids[:, 0]
        centroids = rounded(centroids, dtype)
        q, k = self._tokens(rng, True, centroids, dtype), self._tokens(rng, False, centroids, dtype)
        v = _normal(rng, (self.batch, self.h_kv, self.n_k, self.d_v), dtype)
        q, k = separate_routing(q, k, centroids, dtype, lambda queries: self._tokens(rng, queries, centroids, dtype))
        return q, k, v, dict(centroids=centroids, causal=self.causal, scale=self.scale)

    def _tokens(self, rng, queries: bool, centroids, dtype: str) -> np.ndarray:
        lead = (self.batch, self.h_q, self.n_q) if queries else (self.batch, self.h_kv, self.n_k)
        x = rng.standard_normal(lead + (self.d_qk,))
        if self.split and self.clusters >= 2:  # keys around centroid 0; odd queries around centroid 1
            axis = unit(centroids[0, 0], EXACT)
            toward = np.where(queries & (np.arange(lead[-1]) % 2 == 1), -1.0, 1.0)[:, None]
            x = 3 * toward * axis + 0.3 * x
        if self.ties:
            x[..., ::5, :] = 0.0
        return rounded(x, dtype)


def _routing_gaps(x: np.ndarray, centroids: np.ndarray, dtype: str) -> tuple[np.ndarray, float]:
    """Per token and query head ``(B, H_q, N)``: the cosine gap of its assignment, and the margin."""
    x = x.astype(np.float64)
    exact = cosines(x, centroids.astype(np.float64))
    return _gap(exact), routing_margin(x, centroids, exact, dtype)


def separate_routing(q, k, centroids, dtype: str, draw) -> tuple[np.ndarray, np.ndarray]:
    """Redraw (from ``draw(queries)``) the queries and keys whose nearest centroid wins by less than the margin."""
    q, k = q.copy(), k.copy()
    group = q.shape[1] // k.shape[1]
    for _ in range(REDRAWS):
        q_gap, q_margin = _routing_gaps(q, centroids, dtype)
        k_gap, k_margin = _routing_gaps(np.repeat(k, group, axis=1), centroids, dtype)
        close_q = q_gap <= q_margin
        close_k = (k_gap <= k_margin).reshape(k.shape[0], k.shape[1], group, k.shape[2]).any(axis=2)
        if not (close_q.any() or close_k.any()):
            return q, k
        q[close_q], k[close_k] = draw(True)[close_q], draw(False)[close_k]
    _give_up("the routing")


# LSH attention


@dataclass(frozen=True, repr=False)
class LshCase(_Case):
    batch: int = 1
    heads: int = 1
    n: int = 16
    d: int = 8
    d_v: int = 8
    seed: int = 0
    n_rounds: int = 2
    n_buckets: int = 4
    chunk_len: int = 4
    causal: bool = False
    scale: float | None = None
    ties: bool = False  # rotation columns 0 and 1 equal, and every fifth token zero
    one_bucket: bool = False  # every token in bucket 0 of every round

    def inputs(self, dtype: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(qk, v, kwargs)`` for ``lsh``; ``lsh_buckets`` takes qk and the rotations."""
        rng = np.random.default_rng(self.seed)
        rotations = rng.standard_normal((self.n_rounds, self.d, self.n_buckets // 2))
        axis = rng.standard_normal(self.d)
        axis /= np.linalg.norm(axis)
        if self.one_bucket:
            rotations[:, :, 0] = 4 * np.sqrt(self.d) * axis
        if self.ties and self.n_buckets >= 4:
            rotations[:, :, 1] = rotations[:, :, 0]
        rotations = rounded(rotations, dtype)
        qk = self._tokens(rng, axis, dtype)
        v = _normal(rng, (self.batch, self.heads, self.n, self.d_v), dtype)
        qk = separate_buckets(qk, rotations, dtype, lambda: self._tokens(rng, axis, dtype))
        return qk, v, dict(rotations=rotations, chunk_len=self.chunk_len, causal=self.causal, scale=self.scale)

    def _tokens(self, rng, axis: np.ndarray, dtype: str) -> np.ndarray:
        x = rng.standard_normal((self.batch, self.heads, self.n, self.d))
        if self.one_bucket:
            x = 0.2 * x + 2 * axis
        if self.ties:
            x[..., ::5, :] = 0.0
        return rounded(x, dtype)


def separate_buckets(qk, rotations, dtype: str, draw) -> np.ndarray:
    """Redraw (from ``draw()``) the tokens whose bucket wins by less than the margin in some round."""
    qk = qk.copy()
    for _ in range(REDRAWS):
        exact = projections(qk.astype(np.float64), rotations.astype(np.float64))
        close = (_gap(exact) <= bucket_margin(qk, rotations, exact, dtype)).any(axis=2)  # (B, H, N)
        if not close.any():
            return qk
        qk[close] = draw()[close]
    _give_up("the LSH buckets")


# Strategies: small shapes with the edges (one token, one block, decode rows, GQA groups)

LENGTHS = (1, 2, 3, 5, 8, 13, 16, 17, 31, 33, 48, 64)
#: (cmp_len, cmp_stride, sel_len): tiling and overlapping compression, selection blocks equal to,
#: a multiple of, and not aligned with the compression blocks.
BLOCKINGS = (
    (1, 1, 1),
    (2, 1, 2),
    (2, 2, 2),
    (2, 2, 4),
    (4, 2, 4),
    (4, 2, 6),
    (4, 2, 8),
    (4, 4, 4),
    (4, 4, 8),
    (3, 3, 6),
    (6, 3, 6),
    (8, 4, 8),
    (4, 1, 6),
)
HEADS = ((1, 1), (2, 1), (3, 3), (4, 2), (3, 1))
DIMS = (1, 3, 8, 16, 32)


def lengths(top: int = 64, low: int = 1) -> st.SearchStrategy[int]:
    return st.deferred(
        lambda: st.sampled_from([n for n in LENGTHS if low <= n <= _limit(current().backend.max_seq_len, top)])
    )


def dims() -> st.SearchStrategy[int]:
    return st.deferred(lambda: st.sampled_from([d for d in DIMS if d <= _limit(current().backend.max_head_dim, 32)]))


def _limit(value: int | None, default: int) -> int:
    return default if value is None else min(value, default)


def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**32 - 1)


#: Blockings whose importances are sums of at most two equal terms per head, so that q = 0 gives
#: ties that are exact in every precision and summation order.
TIE_BLOCKINGS = tuple((l, d, s) for l, d, s in BLOCKINGS if d == l and s in (l, 2 * l))


@st.composite
def nsa_cases(draw, *, gates: str = "random", zero_q: bool = False, all_blocks: bool = False) -> NsaCase:
    """An NSA case; ``all_blocks`` makes ``top_n`` cover every selection block; ``zero_q`` makes ties."""
    n_k = draw(lengths())
    n_q = draw(st.one_of(st.just(n_k), st.just(1), st.integers(1, n_k)))
    h_q, h_kv = draw(st.sampled_from(HEADS))
    cmp_len, cmp_stride, sel_len = draw(st.sampled_from(TIE_BLOCKINGS if zero_q else BLOCKINGS))
    top_n = draw(st.integers(1, 6))
    if all_blocks:
        top_n = max(top_n, -(-n_k // sel_len))
    init_blocks = draw(st.integers(0, min(2, top_n)))
    local_blocks = draw(st.integers(0, min(2, top_n - init_blocks)))
    return NsaCase(
        batch=draw(st.integers(1, 2)),
        h_q=h_q,
        h_kv=h_kv,
        n_q=n_q,
        n_k=n_k,
        d_qk=draw(dims()),
        d_v=draw(dims()),
        seed=draw(seeds()),
        cmp_len=cmp_len,
        cmp_stride=cmp_stride,
        sel_len=sel_len,
        top_n=top_n,
        window=draw(st.one_of(st.integers(1, 9), st.just(n_k), st.just(n_k + 3))),
        init_blocks=init_blocks,
        local_blocks=local_blocks,
        compress=draw(st.sampled_from(["mean", "weights", "linear"])),
        gates=gates,
        zero_q=zero_q,
        scale=draw(st.sampled_from([None, None, 0.3, 1.7])),
    )


CAUSAL = (None, "top_left", "bottom_right")


@st.composite
def routed_cases(
    draw,
    *,
    causal: tuple = CAUSAL,
    clusters: tuple = (1, 2, 3, 5, 8),
    min_q: int = 1,
    split: bool = False,
    ties: bool = False,
) -> RoutedCase:
    """A routed case with ``causal`` and the number of clusters drawn from the given choices."""
    h_q, h_kv = draw(st.sampled_from(HEADS))
    return RoutedCase(
        batch=draw(st.integers(1, 2)),
        h_q=h_q,
        h_kv=h_kv,
        n_q=draw(lengths(low=min_q)),
        n_k=draw(lengths()),
        d_qk=draw(dims()),
        d_v=draw(dims()),
        seed=draw(seeds()),
        clusters=draw(st.sampled_from(clusters)),
        causal=draw(st.sampled_from(causal)),
        scale=draw(st.sampled_from([None, 0.3, 1.7])),
        split=split,
        ties=ties,
    )


@st.composite
def lsh_cases(
    draw,
    *,
    causal: bool | None = None,
    rounds: tuple[int, int] = (1, 4),
    one_chunk: bool = False,
    one_bucket: bool = False,
    ties: bool = False,
    top: int = 64,
    min_len: int = 1,
) -> LshCase:
    """An LSH case; ``causal`` None draws it; ``chunk_len`` a divisor of ``N`` (``N`` itself if ``one_chunk``)."""
    n = draw(lengths(top, low=min_len))
    chunk_len = n if one_chunk else draw(st.sampled_from([c for c in range(1, n + 1) if n % c == 0]))
    return LshCase(
        batch=draw(st.integers(1, 2)),
        heads=draw(st.integers(1, 2)),
        n=n,
        d=draw(dims()),
        d_v=draw(dims()),
        seed=draw(seeds()),
        n_rounds=draw(st.integers(*rounds)),
        n_buckets=draw(st.sampled_from([4, 6, 8, 16] if ties else [2, 4, 6, 8, 16])),
        chunk_len=chunk_len,
        causal=draw(st.booleans()) if causal is None else causal,
        scale=draw(st.sampled_from([None, 0.5, 2.0])),
        ties=ties,
        one_bucket=one_bucket,
    )
