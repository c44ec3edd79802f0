"""LSH attention in float64 (clauses ``lsh.*`` in :mod:`attnspec.hierarchical`).

Written as the spec states it: per round, the visible set of each query as a boolean matrix
(bucket, sorted chunk, previous chunk, causality), minus the self key; attention per round with
the bias ``-log N_ij`` (a key seen in ``N_ij`` rounds counts once in all, Reformer Appendix A); the
rounds merged by their LSE (:func:`attnspec.reference.flash.merge_partials`); the self fallback.
:meth:`LSH.equivalent` gives the same result as one ``sdpa`` over the union of the rounds' visible
sets, the form the conformance suite bounds. One method per clause, so a variant overrides exactly
one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.flash import merge_partials
from attnspec.reference.routed import unit
from attnspec.reference.sdpa import prepare
from attnspec.reference.sdpa import sdpa as dense


@dataclass(frozen=True)
class LSH:
    """One validated LSH call: ``qk`` ``(B, H, N, D)``, ``v`` ``(B, H, N, D_v)`` (None to hash only)."""

    qk: np.ndarray
    v: np.ndarray | None
    rotations: np.ndarray
    chunk_len: int | None
    causal: bool
    scale: float

    @classmethod
    def build(cls, qk, v=None, *, rotations, chunk_len=None, causal=False, scale=None) -> LSH:
        qk = check.float_array("qk", qk, ndim=4)  # named here: prepare would call it q and k
        values = check.float_array("v", v, ndim=4) if v is not None else np.zeros(qk.shape[:3] + (1,))
        check.kv_shapes(qk, qk, values, names=("qk", "qk", "v"))
        problem = prepare(qk, qk, values, scale=scale)  # dtypes and scale as sdpa checks them
        d = problem.q.shape[3]
        rotations = check.float_array("rotations", rotations, ndim=3)
        if rotations.shape[0] < 1 or rotations.shape[1] != d or rotations.shape[2] < 1:
            raise ValueError(
                f"rotations must have shape (n_rounds, D, n_buckets / 2) = (R, {d}, n_buckets / 2) "
                f"with R >= 1 and n_buckets >= 2; got {rotations.shape}"
            )
        if not np.isfinite(rotations).all():
            raise ValueError("rotations must be finite")
        if v is not None:
            chunk_len = check.integer("chunk_len", chunk_len, low=1)
            n = problem.q.shape[2]
            if n % chunk_len:  # Trax sorts all rounds as one sequence: its chunks are these only then
                raise ValueError(f"chunk_len must divide the sequence length N = {n}; got chunk_len = {chunk_len}")
            if not isinstance(causal, (bool, np.bool_)):
                raise TypeError(f"causal must be a bool (LSH attention is self-attention); got {causal!r}")
            b, h = problem.q.shape[:2]
            check.fits_in_memory(
                "lsh",
                ("visible sets (B, H, n_rounds, N, N)", (b, h, rotations.shape[0], n, n), 1),
                ("float64 scores (B, H, N, N)", (b, h, n, n), 8),
            )
        return cls(problem.q, None if v is None else problem.v, rotations, chunk_len, bool(causal), problem.scale)

    @property
    def n(self) -> int:
        return self.qk.shape[2]

    # lsh.buckets

    def buckets(self) -> np.ndarray:
        """``(B, H, R, N)``: ``argmax([y, -y])`` with ``y = qk @ rotations[r]``; ties to the lowest index."""
        y = np.einsum("bhnd,rdu->bhrnu", self.qk, self.rotations)
        return np.argmax(np.concatenate([y, -y], axis=-1), axis=-1)

    # lsh.chunks

    def keys(self) -> np.ndarray:
        """Shared-QK keys: ``qk / |qk|`` (0 for a zero vector)."""
        return unit(self.qk)

    def chunks(self, buckets: np.ndarray) -> np.ndarray:
        """``chunk_r(j)``, same shape as ``buckets``: ``j``'s place in the stable sort by bucket, ``// chunk_len``."""
        order = np.argsort(buckets, axis=-1, kind="stable")  # stable: equal buckets keep position order
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(self.n), axis=-1)
        return rank // self.chunk_len

    def round_visible(self, buckets: np.ndarray) -> np.ndarray:
        """``P_r(i)`` as ``(B, H, R, N, N)``: same bucket, own or previous chunk, causal; self included."""
        chunk = self.chunks(buckets)
        same_bucket = buckets[..., :, None] == buckets[..., None, :]
        gap = chunk[..., :, None] - chunk[..., None, :]  # query's chunk minus key's chunk
        visible = same_bucket & (gap >= 0) & (gap <= 1)
        if self.causal:
            visible &= np.tril(np.ones((self.n, self.n), dtype=bool))
        return visible

    # lsh.self_exclusion

    def others(self) -> np.ndarray:
        """``O_r(i) = P_r(i)`` minus the self key: ``(B, H, R, N, N)``."""
        return self.round_visible(self.buckets()) & ~np.eye(self.n, dtype=bool)

    def alone(self, others: np.ndarray) -> np.ndarray:
        """``(B, H, N)``: rows that no round gives another key; their output is their own value."""
        return ~others.any(axis=(2, 4))

    # lsh.rounds

    def duplicates(self, others: np.ndarray) -> np.ndarray:
        """The bias ``-log N_ij`` ``(B, H, N, N)``, ``N_ij`` the rounds with ``j`` in ``O_r(i)``: summed
        over the rounds, a key counts once (0 where ``N_ij = 0``: the mask hides those keys)."""
        return -np.log(np.maximum(others.sum(axis=2), 1))

    def rounds(self, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-round ``(o_r, z_r)`` stacked on a leading round axis: ``(R, B, H, N, D_v)``, ``(R, B, H, N)``."""
        k, bias = self.keys(), self.duplicates(others)
        parts = [
            dense(self.qk, k, self.v, mask=others[:, :, r], bias=bias, scale=self.scale, return_lse=True)
            for r in range(others.shape[2])
        ]
        return np.stack([o for o, _ in parts]), np.stack([z for _, z in parts])

    def output(self) -> np.ndarray:
        """``out`` ``(B, H, N, D_v)``: the rounds merged by LSE; ``v[i]`` where no round has another key."""
        others = self.others()
        out, _ = merge_partials(*self.rounds(others))
        return np.where(self.alone(others)[..., None], self.v, out)

    def visible(self) -> np.ndarray:
        """``(B, H, N, N)``: the union of the rounds' ``O_r(i)``, or ``{i}`` for a row alone in every round."""
        others = self.others()
        return others.any(axis=2) | (np.eye(self.n, dtype=bool) & self.alone(others)[..., :, None])

    def equivalent(self) -> tuple:
        """The same result as one ``sdpa`` problem ``(q, k, v, options)``: the mask :meth:`visible`."""
        return self.qk, self.keys(), self.v, {"mask": self.visible(), "scale": self.scale}


@reference("lsh_buckets")
def lsh_buckets(qk, *, rotations) -> np.ndarray:
    """Clause ``lsh.buckets``: ``(B, H, n_rounds, N)`` integer buckets."""
    return LSH.build(qk, rotations=rotations).buckets()


@reference("lsh")
def lsh(qk, v, *, rotations, chunk_len, causal=False, scale=None) -> np.ndarray:
    """Clauses ``lsh.chunks``, ``lsh.self_exclusion``, ``lsh.rounds``: the output ``(B, H, N, D_v)``."""
    return LSH.build(qk, v, rotations=rotations, chunk_len=chunk_len, causal=causal, scale=scale).output()
