"""Mutants of context-parallel attention (clauses ``cp.*``): the bugs of ring and Ulysses kernels.

Each runs the reference's simulated ranks (:mod:`attnspec.reference.cp`) with one piece replaced:
the position map, the merge, the pair plan, the lengths or the head groups.
"""

from __future__ import annotations

import numpy as np

from attnspec.backends.mutants.base import Mutant
from attnspec.reference import cp as ref
from attnspec.reference.sdpa import softmax_average


class _CpMutant(Mutant):
    """Runs :meth:`wrong` on the prepared shards; the result is rounded to the input dtype."""

    def context_parallel(self, q, k, v, **options):
        self.check_dtypes({"q": q, "k": k, "v": v})
        out, lse = self.wrong(ref.prepare(q, k, v, **options))
        return out.astype(q.dtype), lse.astype(q.dtype)

    def wrong(self, problem: ref.Shards):
        raise NotImplementedError


def _scores(q, k, scale: float) -> np.ndarray:
    b, h_q, n, d = q.shape
    grouped = q.reshape(b, k.shape[1], h_q // k.shape[1], n, d)
    return (grouped @ np.swapaxes(k, -1, -2)[:, :, None]).reshape(b, h_q, n, k.shape[2]) * scale


def _rank_of(where: np.ndarray, pos: np.ndarray) -> int:
    """The rank whose shard holds positions ``pos`` (rank 0 for empty shards)."""
    return int(np.flatnonzero((where == pos[None]).all(axis=1))[0]) if len(pos) else 0


def _ring_or_ulysses(problem: ref.Shards, **ring_changes):
    return ref.ulysses(problem) if problem.scheme == "ulysses" else ref.ring(problem, **ring_changes)


class CpShardsRotatedMutant(_CpMutant):
    """The gather returns rank ``r + 1``'s result as rank ``r``'s (an off-by-one in the rank order)."""

    breaks = "cp"

    def wrong(self, problem):
        out, lse = _ring_or_ulysses(problem)
        return np.roll(out, -1, axis=0), np.roll(lse, -1, axis=0)


class CpContiguousAsStridedMutant(_CpMutant):
    """Contiguous shards read as round-robin ones: token ``t`` of rank ``r`` taken to be at ``t P + r``."""

    breaks = "cp.layout.contiguous"

    def wrong(self, problem):
        def strided(layout, p, c):
            if layout == "contiguous":
                return np.arange(c)[None, :] * p + np.arange(p)[:, None]
            return ref.positions(layout, p, c)

        return ref.ring(problem, pos=strided)


class CpZigzagOffByOneMutant(_CpMutant):
    """The zigzag permutation off by one: rank ``r``'s second chunk taken to be ``2P - 2 - r``
    (wrapping to ``2P - 1`` for the last rank)."""

    breaks = "cp.layout.zigzag"

    def wrong(self, problem):
        def off_by_one(layout, p, c):
            pos = ref.positions(layout, p, c)
            if layout == "zigzag":
                half = c // 2
                second = (2 * p - 2 - np.arange(p)) % (2 * p)
                second = np.where(second < p, 2 * p - 1, second)
                pos[:, half:] = second[:, None] * half + np.arange(half)[None, :]
            return pos

        return ref.ring(problem, pos=off_by_one)


def _merge_base2(outs, lses):
    """``flash.merge`` with the weights and the LSE in base 2 while the partials' LSE is natural."""
    top = lses.max(axis=0)
    shift = np.where(np.isneginf(top), 0.0, top)
    weights = np.exp2(lses - shift)
    total = weights.sum(axis=0)
    has = total > 0
    safe = np.where(has, total, 1.0)
    out = np.where(has[..., None], np.where((weights > 0)[..., None], weights[..., None] * outs, 0).sum(0), 0.0)
    return out / safe[..., None], np.where(has, shift + np.log2(safe), -np.inf)


class CpMergeBase2Mutant(_CpMutant):
    """The ring's per-step merge in base 2 (``exp2`` / ``log2``) on natural-log partials."""

    breaks = "cp.ring"

    def wrong(self, problem):
        return _ring_or_ulysses(problem, merge=_merge_base2)


class CpRingOneStepShortMutant(_CpMutant):
    """The ring stops after ``P - 1`` steps: the K/V shard of rank ``r + 1`` never reaches rank ``r``."""

    breaks = "cp.ring"

    def wrong(self, problem):
        p = problem.world_size
        where = ref.positions(problem.layout, p, problem.shard_len)

        def skip_last(q_pos, k_pos, causal):
            last = p > 1 and _rank_of(where, k_pos) == (_rank_of(where, q_pos) + 1) % p
            return last or ref.pair_kind(q_pos, k_pos, causal) == "skipped"

        return _ring_or_ulysses(problem, skip=skip_last)


class CpDiagonalPairSkippedMutant(_CpMutant):
    """Under a causal mask the diagonal pair (a rank's own K/V) is skipped, as if it held no visible key."""

    breaks = "cp.causal.pairs"

    def wrong(self, problem):
        def skip(q_pos, k_pos, causal):
            return ref.pair_kind(q_pos, k_pos, causal) == "skipped" or (causal and np.array_equal(q_pos, k_pos))

        return ref.ring(problem, skip=skip)


class CpPairsByShardIndexMutant(_CpMutant):
    """Pairs classified by shard index as for the contiguous layout (``s < r`` whole, ``s > r``
    skipped) whatever the layout: zigzag's half-visible pairs are computed whole or dropped."""

    breaks = "cp.causal.pairs"

    def wrong(self, problem):
        where = ref.positions(problem.layout, problem.world_size, problem.shard_len)

        def compute(q, k, v, q_pos, k_pos, scale, causal, lens):
            if causal and _rank_of(where, q_pos) != _rank_of(where, k_pos):  # whole: no causal rule between shards
                return ref.partial(q, k, v, q_pos, k_pos, scale, False, lens)
            return ref.partial(q, k, v, q_pos, k_pos, scale, causal, lens)

        def skip(q_pos, k_pos, causal):
            return causal and _rank_of(where, k_pos) > _rank_of(where, q_pos)

        return ref.ring(problem, compute=compute, skip=skip)


class CpLengthsAsContiguousMutant(_CpMutant):
    """Each rank's valid length computed as for contiguous shards, ``clip(seq_lens - r C, 0, C)``,
    whatever the layout: under zigzag the padding lands on other ranks' tokens."""

    breaks = "cp.lengths"

    def wrong(self, problem):
        c = problem.shard_len
        where = ref.positions(problem.layout, problem.world_size, c)

        def compute(q, k, v, q_pos, k_pos, scale, causal, lens):
            r, s = _rank_of(where, q_pos), _rank_of(where, k_pos)
            local = np.arange(c)
            q_ok = local[None, :] < np.clip(lens - r * c, 0, c)[:, None]  # (B, C)
            k_ok = local[None, :] < np.clip(lens - s * c, 0, c)[:, None]
            vis = ref.visible_pairs(q_pos, k_pos, causal, np.full_like(lens, where.size))
            vis = vis & q_ok[:, None, :, None] & k_ok[:, None, None, :]
            return softmax_average(_scores(q, k, scale), vis, v)

        return ref.ring(problem, compute=compute)


class CpLengthCrossingShardIgnoredMutant(_CpMutant):
    """A length is applied only on the rank whose shard it ends in: shards wholly past it are read
    as valid keys (a length crossing a shard boundary ignored)."""

    breaks = "cp.lengths"

    def wrong(self, problem):
        def compute(q, k, v, q_pos, k_pos, scale, causal, lens):
            past = len(k_pos) > 0 and k_pos.min() >= lens  # (B,): this key shard is wholly past the length
            widened = np.where(past, np.maximum(lens, k_pos.max(initial=-1) + 1), lens)
            vis = ref.visible_pairs(q_pos, k_pos, causal, widened)
            vis = vis & (q_pos[None, None, :, None] < lens[:, None, None, None])
            return softmax_average(_scores(q, k, scale), vis, v)

        return ref.ring(problem, compute=compute)


class CpLseBase2Mutant(_CpMutant):
    """The LSE returned in base 2 (``log2`` of the denominator), the output right."""

    breaks = "cp.lse"

    def wrong(self, problem):
        out, lse = _ring_or_ulysses(problem)
        return out, lse / np.log(2.0)


class CpLseOfOwnShardMutant(_CpMutant):
    """The LSE returned is that of the rank's own K/V shard (step 0), not of the whole sequence."""

    breaks = "cp.lse"

    def wrong(self, problem):
        out, _ = _ring_or_ulysses(problem)
        where = ref.positions(problem.layout, problem.world_size, problem.shard_len)
        own = [
            ref.partial(qr, kr, vr, pos, pos, problem.scale, problem.causal, problem.seq_lens)[1]
            for qr, kr, vr, pos in zip(problem.q, problem.k, problem.v, where, strict=True)
        ]
        return out, np.stack(own)


class CpUlyssesHeadsStridedMutant(_CpMutant):
    """Ulysses scatters KV heads round-robin (rank ``r`` gets ``r, r + P, ...``) while query heads
    go in contiguous blocks: a GQA group is split from its KV head."""

    breaks = "cp.ulysses"

    def wrong(self, problem):
        if problem.scheme != "ulysses":
            return ref.ring(problem)

        def strided(h_q, h_kv, p):
            return [(heads, range(r, h_kv, p)) for r, (heads, _) in enumerate(ref.head_groups(h_q, h_kv, p))]

        return ref.ulysses(problem, groups=strided)
