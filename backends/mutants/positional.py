"""Mutants of the positional encodings."""

from __future__ import annotations

import numpy as np

from attnspec.backends.mutants.base import Mutant
from attnspec.reference import absolute, relative, rope


class RopeOtherLayoutMutant(Mutant):
    """Half-split RoPE is computed interleaved (GPT-J weights run through a NeoX kernel)."""

    breaks = "rope.half_split"
    convention = "`rope.interleaved` (pairs (2c, 2c + 1), GPT-J's layout) in place of half-split"

    def rope(self, x, positions, *, layout, **kwargs):
        return super().rope(x, positions, layout="interleaved" if layout == "half_split" else layout, **kwargs)


class RopeReversedRotationMutant(Mutant):
    """Interleaved RoPE rotates by ``-angle`` (the sign of sin flipped)."""

    breaks = "rope.interleaved"

    def rope(self, x, positions, *, layout, rotary_dim=None, **kwargs):
        if layout != "interleaved":
            return super().rope(x, positions, layout=layout, rotary_dim=rotary_dim, **kwargs)
        r = x.shape[-1] if rotary_dim is None else rotary_dim
        swapped = rope.rope(_swap_pairs(x, r), positions, layout=layout, rotary_dim=rotary_dim, **kwargs)
        return _swap_pairs(swapped, r).astype(x.dtype)  # swap, rotate, swap back: rotation by -angle


def _swap_pairs(x, r):
    y = np.array(x, copy=True)
    y[..., 0:r:2], y[..., 1:r:2] = x[..., 1:r:2], x[..., 0:r:2]
    return y


class RopePartialFrequenciesMutant(Mutant):
    """Partial RoPE takes its frequencies from the head dim D instead of ``rotary_dim``."""

    breaks = "rope.partial"

    def rope(self, x, positions, *, layout, rotary_dim=None, base=10000.0):
        r = x.shape[-1] if rotary_dim is None else rotary_dim
        # theta_c = base ** (-2c / D) is base' ** (-2c / r) with base' = base ** (r / D)
        return super().rope(x, positions, layout=layout, rotary_dim=rotary_dim, base=base ** (r / x.shape[-1]))


class SinusoidalConcatForInterleavedMutant(Mutant):
    """The interleaved sinusoidal layout is returned concatenated."""

    breaks = "pe.sinusoidal.interleaved"
    convention = "`pe.sinusoidal.concat` (a sin block, then a cos block) in place of interleaved"

    def sinusoidal(self, positions, dim, *, layout, **kwargs):
        return absolute.sinusoidal(positions, dim, layout="concat", **kwargs)


class SinusoidalCosFirstMutant(Mutant):
    """The concatenated layout puts cos before sin."""

    breaks = "pe.sinusoidal.concat"

    def sinusoidal(self, positions, dim, *, layout, **kwargs):
        pe = absolute.sinusoidal(positions, dim, layout=layout, **kwargs)
        return np.roll(pe, dim // 2, axis=-1) if layout == "concat" else pe


class SinusoidalT2tWithConcatFrequenciesMutant(Mutant):
    """tensor2tensor's layout with the concat clause's frequencies ``base ** (-2c / dim)``."""

    breaks = "pe.sinusoidal.t2t"
    convention = "the frequencies base^(-2c/dim) of `pe.sinusoidal.concat` (HF Marian, x-transformers) in place of tensor2tensor's base^(-c/(dim/2 - 1))"

    def sinusoidal(self, positions, dim, *, layout, **kwargs):
        return absolute.sinusoidal(positions, dim, layout="concat" if layout == "t2t" else layout, **kwargs)


class LearnedOffByOneMutant(Mutant):
    """Learned positions are read one row late (1-based positions)."""

    breaks = "pe.learned"

    def learned(self, table, positions):
        return absolute.learned(table, np.minimum(np.asarray(positions) + 1, table.shape[0] - 1)).astype(table.dtype)


class AlibiGeometricSlopesMutant(Mutant):
    """Slopes form a plain geometric series ``2 ** (-8 (h + 1) / n)`` for every head count."""

    breaks = "alibi.slopes"
    convention = "plain geometric ALiBi slopes 2^(-8h/n) for every head count (not the paper's interleaving for non-powers of two)"

    def alibi_slopes(self, num_heads):
        return np.exp2(-8.0 * np.arange(1, num_heads + 1) / num_heads)


class AlibiBiasTopLeftMutant(Mutant):
    """ALiBi tables ignore the bottom-right offset ``N_k - N_q``."""

    breaks = "alibi.bias"

    def alibi_bias(self, slopes, n_q, n_k, *, form):
        dist = np.arange(n_k)[None, :] - np.arange(n_q)[:, None]
        dist = -np.abs(dist) if form == "symmetric" else dist
        return np.asarray(slopes, np.float64)[:, None, None] * dist


class T5UnhalvedBucketsMutant(Mutant):
    """Bidirectional buckets do not split the range in two halves by sign."""

    breaks = "t5.bucket"

    def t5_bucket(self, relative_position, *, bidirectional, num_buckets, max_distance):
        rel = -np.abs(relative_position) if bidirectional else relative_position
        return relative.t5_bucket(rel, bidirectional=False, num_buckets=num_buckets, max_distance=max_distance)


class T5BucketFloat64Mutant(Mutant):
    """The T5 log bin is evaluated in float64, not float32 (the reference before issue 14)."""

    breaks = "t5.bucket"
    convention = "the T5 log bin in float64 (trained T5 models compute it in float32)"

    def t5_bucket(self, relative_position, *, bidirectional, num_buckets, max_distance):
        rel = np.asarray(relative_position, np.int64)
        n = num_buckets // 2 if bidirectional else num_buckets
        exact = n // 2
        bucket = np.where(rel > 0, n, 0) if bidirectional else np.zeros_like(rel)
        dist = np.abs(rel) if bidirectional else np.maximum(-rel, 0)
        with np.errstate(divide="ignore"):  # log(0) where dist = 0; np.where keeps dist there
            log_bin = np.log(dist / exact) / np.log(max_distance / exact) * (n - exact)
        large = np.minimum(exact + np.where(dist < exact, 0, log_bin).astype(np.int64), n - 1)
        return bucket + np.where(dist < exact, dist, large)


class T5QueryMinusKeyMutant(Mutant):
    """The T5 relative position is taken as query minus key."""

    breaks = "t5.bias"

    def t5_bias(self, table, q_positions, k_positions, **kwargs):
        buckets = relative.t5_bucket(np.asarray(q_positions)[:, None] - np.asarray(k_positions)[None, :], **kwargs)
        return np.moveaxis(table[buckets], -1, 0)


class ShawIgnoresRelativeValuesMutant(Mutant):
    """Shaw attention drops the relative value term."""

    breaks = "shaw"

    def shaw(self, q, k, v, *, rel_v, **kwargs):
        return relative.shaw(q, k, v, rel_v=np.zeros_like(rel_v), **kwargs).astype(q.dtype)
