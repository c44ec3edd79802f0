"""Mutants of :mod:`attnspec.linear`: linear attention, efficient attention and Performer."""

from __future__ import annotations

import math

import numpy as np

from attnspec.backends.mutants.base import Mutant
from attnspec.reference import linear, performer


def _linear(q, k, v, *, forms=None, phi=linear.phi, output_final_state=False, **options):
    """``linear_attention`` with the reference's argument checks and its feature map (``phi``) or
    forms (``forms``, name -> function) replaced: only the arithmetic is wrong, cast like the backend."""
    _, _, v64, s0, z0 = linear.validate(q, k, v, **options)
    feature_map, scale = options.get("feature_map", "elu+1"), options.get("scale", 1.0)
    fq = phi(np.asarray(q, np.float64), feature_map) * scale
    fk = phi(np.asarray(k, np.float64), feature_map)
    form, causal = options.get("form", "parallel"), options.get("causal", False)
    impl = {"parallel": linear.parallel, "recurrent": linear.recurrent, "chunked": linear.chunked, **(forms or {})}[
        form
    ]
    extra = {"chunk_size": options["chunk_size"]} if form == "chunked" else {}
    p = impl(fq, fk, v64, s0, z0, causal=causal, **extra)
    out = linear.finish(p.num, p.den, normalize=options.get("normalize", True), eps=options.get("eps", 0.0))
    out = out.astype(q.dtype)
    return (out, p.state.astype(q.dtype), p.normalizer.astype(q.dtype)) if output_final_state else out


def _elu(x, name):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0))) if name == "elu+1" else linear.phi(x, name)


class EluWithoutOneMutant(Mutant):
    """The "elu+1" map forgets the +1: ``phi(x) = elu(x)``, negative for ``x < 0``."""

    breaks = "linear.feature_map"

    def linear_attention(self, q, k, v, **kwargs):
        return _linear(q, k, v, phi=_elu, **kwargs)


class ZeroDenominatorNanMutant(Mutant):
    """Divides ``num / (den + eps)`` without the zero rule: a relu row with no positive overlap is NaN."""

    breaks = "linear.normalizer"

    def linear_attention(self, q, k, v, *, normalize=True, eps=0.0, output_final_state=False, **kwargs):
        p = linear.parts(q, k, v, normalize=normalize, eps=eps, **kwargs)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (p.num / (p.den + eps)[..., None] if normalize else p.num).astype(q.dtype)
        return (out, p.state.astype(q.dtype), p.normalizer.astype(q.dtype)) if output_final_state else out


def _chunked_unmasked(fq, fk, v, s0, z0, *, causal, chunk_size):
    """The causal chunked form with an unmasked intra-chunk product (no ``tril``)."""
    if not causal:
        return linear.chunked(fq, fk, v, s0, z0, causal=False, chunk_size=chunk_size)
    state, normalizer = s0.copy(), z0.copy()
    num, den = np.zeros(fq.shape[:-1] + v.shape[-1:]), np.zeros(fq.shape[:-1])
    for c0 in range(0, fk.shape[-2], chunk_size):
        c = slice(c0, c0 + chunk_size)
        a = fq[..., c, :] @ np.swapaxes(fk[..., c, :], -1, -2)
        num[..., c, :] = fq[..., c, :] @ state + a @ v[..., c, :]
        den[..., c] = np.einsum("bhnf,bhf->bhn", fq[..., c, :], normalizer) + a.sum(axis=-1)
        state += np.swapaxes(fk[..., c, :], -1, -2) @ v[..., c, :]
        normalizer += fk[..., c, :].sum(axis=-2)
    return linear.Parts(num, den, state, normalizer)


class ChunkLeaksFutureKeysMutant(Mutant):
    """Causal chunked form without the intra-chunk causal mask: a query sees later keys of its chunk."""

    breaks = "linear.causal"

    def linear_attention(self, q, k, v, **kwargs):
        return _linear(q, k, v, forms={"chunked": _chunked_unmasked}, **kwargs)


def _parallel_unmasked_normalizer(fq, fk, v, s0, z0, *, causal):
    """The parallel form masks the numerator but normalises by every key's features."""
    p = linear.parallel(fq, fk, v, s0, z0, causal=causal)
    return p._replace(den=np.einsum("bhnf,bhf->bhn", fq, z0 + fk.sum(axis=-2))) if causal else p


class ParallelNormalizerUnmaskedMutant(Mutant):
    """The causal parallel form applies the mask to ``A v`` only: the denominator sums all keys."""

    breaks = "linear.parallel"

    def linear_attention(self, q, k, v, **kwargs):
        return _linear(q, k, v, forms={"parallel": _parallel_unmasked_normalizer}, **kwargs)


def _recurrent_read_first(fq, fk, v, s0, z0, *, causal):
    """Each token reads the state before adding itself: the diagonal ``j = i`` is excluded."""
    if not causal:
        return linear.recurrent(fq, fk, v, s0, z0, causal=False)
    state, normalizer = s0.copy(), z0.copy()
    num, den = np.zeros(fq.shape[:-1] + v.shape[-1:]), np.zeros(fq.shape[:-1])
    for t in range(fk.shape[-2]):
        num[..., t, :] = np.einsum("bhf,bhfd->bhd", fq[..., t, :], state)
        den[..., t] = np.einsum("bhf,bhf->bh", fq[..., t, :], normalizer)
        state += fk[..., t, :, None] * v[..., t, None, :]
        normalizer += fk[..., t, :]
    return linear.Parts(num, den, state, normalizer)


class RecurrentReadsBeforeUpdateMutant(Mutant):
    """The causal recurrent form reads the state before updating it, so a token does not see itself."""

    breaks = "linear.recurrent"

    def linear_attention(self, q, k, v, **kwargs):
        return _linear(q, k, v, forms={"recurrent": _recurrent_read_first}, **kwargs)


def _chunked_partial_without_state(fq, fk, v, s0, z0, *, causal, chunk_size):
    """The last, partial chunk of a causal pass reads the initial state instead of the carried one."""
    p = linear.chunked(fq, fk, v, s0, z0, causal=causal, chunk_size=chunk_size)
    n = fk.shape[-2]
    start = (n // chunk_size) * chunk_size
    if not causal or start in (0, n):
        return p
    tail = linear.chunked(
        fq[..., start:, :], fk[..., start:, :], v[..., start:, :], s0, z0, causal=True, chunk_size=chunk_size
    )
    num, den = p.num.copy(), p.den.copy()
    num[..., start:, :], den[..., start:] = tail.num, tail.den
    return p._replace(num=num, den=den)


class ChunkedDropsStateForPartialChunkMutant(Mutant):
    """When ``C`` does not divide ``N``, the last partial chunk starts from the initial state."""

    breaks = "linear.chunked"

    def linear_attention(self, q, k, v, **kwargs):
        return _linear(q, k, v, forms={"chunked": _chunked_partial_without_state}, **kwargs)


class IgnoresInitialNormalizerMutant(Mutant):
    """Carries ``S`` only, as flash-linear-attention does: ``z0`` is dropped from the denominator and
    from the returned normaliser, which sums the current call's keys."""

    breaks = "linear.state"

    def linear_attention(self, q, k, v, *, initial_normalizer=None, **kwargs):
        return super().linear_attention(q, k, v, **kwargs)


def _recurrent_all_states(fq, fk, v, s0, z0, *, causal):
    """The causal recurrent form as a prefix sum that keeps every token's state: ``N x F x D_v``."""
    if not causal:
        return linear.recurrent(fq, fk, v, s0, z0, causal=False)
    states = s0[..., None, :, :] + np.cumsum(fk[..., :, :, None] * v[..., :, None, :], axis=-3)
    normalizers = z0[..., None, :] + np.cumsum(fk, axis=-2)
    num = np.einsum("bhnf,bhnfd->bhnd", fq, states)
    den = np.einsum("bhnf,bhnf->bhn", fq, normalizers)
    return linear.Parts(num, den, states[..., -1, :, :].copy(), normalizers[..., -1, :].copy())


class RecurrentStoresEveryStateMutant(Mutant):
    """The causal recurrent form takes a cumulative sum of outer products, holding ``N`` states."""

    breaks = "linear.cost"

    def linear_attention(self, q, k, v, **kwargs):
        return _linear(q, k, v, forms={"recurrent": _recurrent_all_states}, **kwargs)


class ChunkedIsQuadraticMutant(Mutant):
    """The "chunked" form is computed by the masked ``N x N`` parallel form."""

    breaks = "linear.cost"

    def linear_attention(self, q, k, v, *, form="parallel", chunk_size=None, **kwargs):
        if form == "chunked":
            form, chunk_size = "parallel", None
        return super().linear_attention(q, k, v, form=form, chunk_size=chunk_size, **kwargs)


class EfficientKeySoftmaxOverFeaturesMutant(Mutant):
    """Efficient attention normalises the keys over the feature axis (like the queries), not the sequence."""

    breaks = "linear.efficient"

    def efficient_attention(self, q, k, v):
        def softmax_features(x):
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

        rho_q, rho_k = softmax_features(np.asarray(q, np.float64)), softmax_features(np.asarray(k, np.float64))
        return (rho_q @ (np.swapaxes(rho_k, -1, -2) @ np.asarray(v, np.float64))).astype(q.dtype)


class FeaturesWithoutNormTermMutant(Mutant):
    """Performer features drop the ``- |x|^2 / 2`` term: ``exp(W x) / sqrt(m)``, biased by ``exp(|x|^2 / 2)``."""

    breaks = "performer.features"

    def performer_features(self, x, projection):
        x64, w = np.asarray(x, np.float64), np.asarray(projection, np.float64)
        return (np.exp(x64 @ w.T) / math.sqrt(w.shape[0])).astype(x.dtype)


class ProjectionRowsNotOrthogonalMutant(Mutant):
    """ORF without the QR step: the Gaussian rows, normalised and scaled by ``norms``, used directly."""

    breaks = "performer.orthogonal"

    def orthogonal_projection(self, gaussian_blocks, norms):
        g = np.asarray(gaussian_blocks, np.float64)
        rows = g.reshape(-1, g.shape[-1])[: norms.shape[0]]
        rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
        return (rows * np.asarray(norms, np.float64)[:, None]).astype(gaussian_blocks.dtype)


class PerformerScaleOnQueryMutant(Mutant):
    """The whole ``1 / sqrt(D)`` goes on ``q`` (as in ``sdpa``): the same kernel in expectation, another
    estimate for the given projection."""

    breaks = "performer"

    def performer(self, q, k, v, *, projection, causal=False, scale=None):
        d = q.shape[-1]
        scale = 1 / math.sqrt(d) if scale is None else scale
        w = np.asarray(projection, np.float64)
        lq = performer.logits(np.asarray(q, np.float64) * scale, w, performer.EXACT)
        lk = performer.logits(np.asarray(k, np.float64), w, performer.EXACT)
        return performer.attend_logits(lq, lk, np.asarray(v, np.float64), causal=causal).astype(q.dtype)


def _shifted_performer(q, k, v, projection, causal, scale, key_logits):
    """Performer whose key features are ``exp(key_logits(k', W))`` (already shifted), non-causal or
    with the causal quadratic mask: only the key shift differs from the reference."""
    root = math.sqrt(1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    w = np.asarray(projection, np.float64)
    lq = performer.logits(np.asarray(q, np.float64) * root, w, performer.EXACT)
    fq = np.exp(lq - lq.max(axis=-1, keepdims=True))
    fk = np.exp(key_logits(np.asarray(k, np.float64) * root, w))
    b, h, _, m = fq.shape
    p = linear.parallel(
        fq, fk, np.asarray(v, np.float64), np.zeros((b, h, m, v.shape[-1])), np.zeros((b, h, m)), causal=causal
    )
    return linear.finish(p.num, p.den, normalize=True).astype(q.dtype)


def _projection_max_shift(k_root, w):
    projected = k_root @ w.T
    return projected - (k_root * k_root).sum(-1, keepdims=True) / 2 - projected.max(axis=(-2, -1), keepdims=True)


def _global_max_shift(k_root, w):
    lk = performer.logits(k_root, w, performer.EXACT)
    return lk - lk.max(axis=(-2, -1), keepdims=True)


class PerformerProjectionMaxStabiliserMutant(Mutant):
    """Key features are stabilised by the maximum of ``W k'`` over all keys (the paper's code): exact
    in real arithmetic, but in the causal form a large future key underflows every earlier feature."""

    breaks = "performer"

    def performer(self, q, k, v, *, projection, causal=False, scale=None):
        return _shifted_performer(q, k, v, projection, causal, scale, _projection_max_shift)


class PerformerGlobalKeyMaxMutant(Mutant):
    """Key features are shifted by the maximum of the full key logits over ALL keys, also causally:
    nothing overflows, but a key whose logits lie far below a later key's underflows to 0."""

    breaks = "performer"

    def performer(self, q, k, v, *, projection, causal=False, scale=None):
        return _shifted_performer(q, k, v, projection, causal, scale, _global_max_shift)


class PerformerTruncatesFeaturesMutant(Mutant):
    """The kernel holds one tile of 256 features: projection rows after the first 256 are ignored."""

    breaks = "performer"

    def performer(self, q, k, v, *, projection, **kwargs):
        return super().performer(q, k, v, projection=projection[:256], **kwargs)


class PerformerIgnoresScaleMutant(Mutant):
    """``scale`` is accepted and dropped: queries and keys are always scaled by ``D ** -1/4``."""

    breaks = "performer"

    def performer(self, q, k, v, *, projection, causal=False, scale=None):
        return super().performer(q, k, v, projection=projection, causal=causal)


class PerformerUsesSixteenFeaturesMutant(Mutant):
    """The attention kernel has one fixed tile of 16 features and ignores the projection's other rows."""

    breaks = "performer.estimator"

    def performer(self, q, k, v, *, projection, **kwargs):
        return super().performer(q, k, v, projection=projection[:16], **kwargs)
