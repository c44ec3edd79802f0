"""Mutants of :mod:`attnspec.hierarchical`: NSA, routed and LSH attention, each wrong in one step.

The NSA and LSH mutants subclass the reference's problem classes and override the one method of
the clause they break, so everything else is the reference.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from attnspec.backends.mutants.base import Mutant
from attnspec.reference import routed as routed_ref
from attnspec.reference.arithmetic import EXACT
from attnspec.reference.flash import merge_partials
from attnspec.reference.lsh import LSH
from attnspec.reference.nsa import NSA


def _nsa(variant: type[NSA], q, k, v, kwargs) -> np.ndarray:
    return variant.build(q, k, v, **kwargs).output().astype(q.dtype)


def _lsh(variant: type[LSH], qk, v, kwargs) -> np.ndarray:
    return variant.build(qk, v, **kwargs).output().astype(qk.dtype)


class _EarlyBlocks(NSA):
    def cmp_visible(self):
        return (np.arange(self.num_cmp) * self.cmp_stride)[None, :] <= self.positions[:, None]


class NsaIncompleteBlockMutant(Mutant):
    """A compressed block is visible once its first token is (``c*d <= t_i``), before it is complete."""

    breaks = "nsa.compress"

    def nsa(self, q, k, v, **kwargs):
        return _nsa(_EarlyBlocks, q, k, v, kwargs)


class _ChannelMajor(NSA):
    def compress(self, x, weights, arithmetic=EXACT):
        if weights is None or weights.ndim == 1:
            return super().compress(x, weights, arithmetic)
        # the block (l, D) flattened channel-major: element e * l + r instead of r * D + e
        shuffled = weights.reshape(x.shape[3], self.cmp_len, -1).transpose(1, 0, 2).reshape(weights.shape)
        return super().compress(x, shuffled, arithmetic)


class NsaChannelMajorFlattenMutant(Mutant):
    """The linear compressor reads the flattened block channel-major, not token-major."""

    breaks = "nsa.compress"

    def nsa(self, q, k, v, **kwargs):
        return _nsa(_ChannelMajor, q, k, v, kwargs)


class _HighTies(NSA):
    def ranking(self, key):
        last = key.shape[-1] - 1
        return last - np.argsort(-key[..., ::-1], axis=-1, kind="stable")


class NsaTieToHigherIndexMutant(Mutant):
    """Equal importance selects the higher block index (a descending sort that keeps the last of
    equals), in ``nsa_select`` and in the fused ``nsa``."""

    breaks = "nsa.select.ties"

    def nsa_select(self, q, k, **kwargs):
        return _HighTies.build(q, k, **kwargs).select()

    def nsa(self, q, k, v, **kwargs):
        return _nsa(_HighTies, q, k, v, kwargs)


class NsaSelectFirstHeadMutant(Mutant):
    """A KV head's blocks are ranked by its group's first query head only, not the sum over the group."""

    breaks = "nsa.select"

    def nsa_select(self, q, k, **kwargs):
        leaders = q[:, :: q.shape[1] // k.shape[1]]
        return NSA.build(leaders, k, **kwargs).select()


class _PerHead(NSA):
    def selected_mask(self, indices):
        importance = self.cmp_probabilities() @ self.block_weights()  # (B, H_q, N_q, blocks): no group sum
        per_head = NSA(**{**vars(self), "k": np.repeat(self.k, self.group, axis=1)})  # groups of one head
        return per_head.selected_mask(per_head.select(importance))


class NsaSelectionPerQueryHeadMutant(Mutant):
    """Each query head attends to its own top-n blocks instead of its group's shared selection."""

    breaks = "nsa.selected"

    def nsa(self, q, k, v, **kwargs):
        return _nsa(_PerHead, q, k, v, kwargs)


class _WideWindow(NSA):
    def window_options(self):
        return {"causal": "bottom_right", "window": (self.window, 0)}


class NsaWindowOffByOneMutant(Mutant):
    """The window branch sees ``window + 1`` keys (an exclusive lower bound)."""

    breaks = "nsa.window"

    def nsa(self, q, k, v, **kwargs):
        return _nsa(_WideWindow, q, k, v, kwargs)


class _ReversedGates(NSA):
    def output(self):
        return NSA.output(replace(self, gates=self.gates[..., ::-1]))


class NsaGatesReversedMutant(Mutant):
    """The gates are read in the order (window, selected, compressed)."""

    breaks = "nsa.combine"

    def nsa(self, q, k, v, **kwargs):
        return _nsa(_ReversedGates, q, k, v, kwargs)


class RoutedUnnormalisedCentroidsMutant(Mutant):
    """Tokens go to ``argmax_c dot(x, mu_c)``: the centroids are not normalised, so long ones win."""

    breaks = "routed.assign"

    def routed_assign(self, q, k, *, centroids):
        c = centroids.astype(np.float64)
        by_dot = [
            np.argmax(routed_ref.unit(x.astype(np.float64)) @ np.swapaxes(c, -1, -2)[None], axis=-1)
            for x in (q, routed_ref.per_query_head(k, q.shape[1]))
        ]
        return tuple(by_dot)


class RoutedCausalIgnoredMutant(Mutant):
    """``causal`` is dropped: a query sees the later keys of its cluster."""

    breaks = "routed"

    def routed(self, q, k, v, *, causal=None, **kwargs):
        return super().routed(q, k, v, **kwargs)


class RoutedEmptyClusterNanMutant(Mutant):
    """A query whose cluster holds no visible key gets NaN (softmax of an all ``-inf`` row)."""

    breaks = "routed"

    def routed(self, q, k, v, **kwargs):
        out, lse = super().routed(q, k, v, **kwargs)
        empty = np.isneginf(lse)
        return np.where(empty[..., None], np.nan, out).astype(q.dtype), np.where(empty, np.nan, lse).astype(q.dtype)


class LshNegatedFirstMutant(Mutant):
    """Buckets are the argmax of ``[-y, y]`` instead of ``[y, -y]``."""

    breaks = "lsh.buckets"

    def lsh_buckets(self, qk, *, rotations):
        y = np.einsum("bhnd,rdu->bhrnu", qk.astype(np.float64), rotations.astype(np.float64))
        return np.argmax(np.concatenate([-y, y], axis=-1), axis=-1)


class _OwnChunkOnly(LSH):
    def round_visible(self, buckets):
        chunk = self.chunks(buckets)
        return super().round_visible(buckets) & (chunk[..., :, None] == chunk[..., None, :])


class LshNoPreviousChunkMutant(Mutant):
    """A query attends within its own chunk only, not to the previous chunk."""

    breaks = "lsh.chunks"

    def lsh(self, qk, v, **kwargs):
        return _lsh(_OwnChunkOnly, qk, v, kwargs)


class _AnyBucket(LSH):
    def round_visible(self, buckets):
        chunk = self.chunks(buckets)
        gap = chunk[..., :, None] - chunk[..., None, :]
        visible = (gap >= 0) & (gap <= 1)
        return visible & np.tril(np.ones((self.n, self.n), dtype=bool)) if self.causal else visible


class LshNoBucketMaskMutant(Mutant):
    """Every key of the two chunks is attended, whatever its bucket (as Hugging Face's Reformer does)."""

    breaks = "lsh.chunks"

    def lsh(self, qk, v, **kwargs):
        return _lsh(_AnyBucket, qk, v, kwargs)


class _Wraparound(LSH):
    def round_visible(self, buckets):
        chunk = self.chunks(buckets)
        gap = (chunk[..., :, None] - chunk[..., None, :]) % (self.n // self.chunk_len)  # chunk 0 - 1 = last
        visible = (buckets[..., :, None] == buckets[..., None, :]) & (gap <= 1)
        return visible & np.tril(np.ones((self.n, self.n), dtype=bool)) if self.causal else visible


class LshWraparoundMutant(Mutant):
    """Chunk 0 also sees the last chunk, as its previous one (a roll of the chunks, without the
    rule that chunk 0 has no previous chunk)."""

    breaks = "lsh.chunks"

    def lsh(self, qk, v, **kwargs):
        return _lsh(_Wraparound, qk, v, kwargs)


class _SelfIncluded(LSH):
    def others(self):
        return self.round_visible(self.buckets())


class LshSelfIncludedMutant(Mutant):
    """No self-exclusion: a token attends to itself with its true score."""

    breaks = "lsh.self_exclusion"

    def lsh(self, qk, v, **kwargs):
        return _lsh(_SelfIncluded, qk, v, kwargs)


class _AloneRoundsCount(LSH):
    def output(self):
        others = self.others()
        lonely_rounds = ~others.any(axis=-1)  # (B, H, R, N): i sees only itself in that round
        kept = others | (lonely_rounds[..., None] & np.eye(self.n, dtype=bool))
        return merge_partials(*self.rounds(kept))[0]


class LshSelfScoredWhenAloneMutant(Mutant):
    """In a round where a token sees only itself, the self key keeps its true score and weighs
    against the other rounds (the exclusion is decided per round, not across rounds)."""

    breaks = "lsh.self_exclusion"

    def lsh(self, qk, v, **kwargs):
        return _lsh(_AloneRoundsCount, qk, v, kwargs)


class _AveragedRounds(LSH):
    def output(self):
        others = self.others()
        outs, lses = self.rounds(others)
        has = np.isfinite(lses)[..., None]
        mean = (outs * has).sum(axis=0) / np.maximum(has.sum(axis=0), 1)
        return np.where(self.alone(others)[..., None], self.v, mean)


class LshRoundsAveragedMutant(Mutant):
    """Hash rounds are averaged (rounds with a key, equal weights) instead of weighted by their LSE."""

    breaks = "lsh.rounds"

    def lsh(self, qk, v, **kwargs):
        return _lsh(_AveragedRounds, qk, v, kwargs)


class _CountedPerRound(LSH):
    def duplicates(self, others):
        return np.zeros(others.shape[:2] + others.shape[3:])


class LshKeyCountedPerRoundMutant(Mutant):
    """The rounds are merged by LSE without subtracting ``log N_ij``: a key seen in ``N_ij`` rounds
    counts ``N_ij`` times (Hugging Face's Reformer; reformer-pytorch's default)."""

    breaks = "lsh.rounds"

    def lsh(self, qk, v, **kwargs):
        return _lsh(_CountedPerRound, qk, v, kwargs)


class _Float32RoundLse(LSH):
    def output(self):
        out, alone = super().output(), self.alone(self.others())
        # The finite self penalty: each round holds the self key alone, at s_ii - 1e5 - log R.
        f32, log_r = np.float32, np.float32(np.log(self.rotations.shape[0]))
        s_self = (self.qk.astype(f32) * self.keys().astype(f32)).sum(axis=-1) * f32(self.scale)
        z_r = s_self - f32(1e5) - log_r
        z = z_r + log_r  # log of R equal terms, stored in float32: loses up to ulp(1e5) / 2
        weight_sum = self.rotations.shape[0] * np.exp(z_r - z)  # not normalised
        return np.where(alone[..., None], weight_sum[..., None] * self.v, out)


class LshRoundWeightsFloat32Mutant(Mutant):
    """With a finite self penalty (-1e5), the rounds' LSE ``z`` is stored in float32 and the weights
    ``exp(z_r - z)`` are not normalised: a token alone in every round is scaled by up to 0.4%."""

    breaks = "lsh.rounds"

    def lsh(self, qk, v, **kwargs):
        return _lsh(_Float32RoundLse, qk, v, kwargs)
