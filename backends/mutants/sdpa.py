"""Mutants of the core operation, its options and its visibility rules."""

from __future__ import annotations

import math

import numpy as np

from attnspec import reference as ref
from attnspec.backends.mutants.base import Mutant
from attnspec.reference.arithmetic import Arithmetic
from attnspec.reference.sdpa import attend, prepare, scores, softmax_average, visible, weighted_values


def _finish(q, out, lse, return_lse):
    out = np.asarray(out).astype(q.dtype)
    return (out, np.asarray(lse).astype(q.dtype)) if return_lse else out


class CausalOffByOneMutant(Mutant):
    """Causal masks let each query see one key too many (``j <= i + offset + 1``)."""

    breaks = "sdpa.causal.bottom_right"

    def sdpa(self, q, k, v, *, causal=None, **options):
        if causal is not None:
            mask = _causal_plus_one(causal, q, k, options)
            options["mask"] = mask & options["mask"] if "mask" in options else mask
        return super().sdpa(q, k, v, **options)


def _causal_plus_one(causal, q, k, options):
    b, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
    if causal == "top_left":
        return np.broadcast_to(j <= i + 1, (b, 1, n_q, n_k))
    offsets = options.get("kv_lens", np.full(b, n_k)) - options.get("q_lens", np.full(b, n_q))
    return j <= i + offsets[:, None, None, None] + 1


class TopLeftForBottomRightMutant(Mutant):
    """``causal="bottom_right"`` is computed as top-left (PyTorch's ``is_causal``)."""

    breaks = "sdpa.causal.bottom_right"
    convention = "`sdpa.causal.top_left` (causal aligned top-left, as PyTorch's is_causal)"

    def sdpa(self, q, k, v, *, causal=None, **options):
        return super().sdpa(q, k, v, causal="top_left" if causal else None, **options)


class BottomRightForTopLeftMutant(Mutant):
    """``causal="top_left"`` is computed as bottom-right (flash-attn's ``causal=True``)."""

    breaks = "sdpa.causal.top_left"
    convention = "`sdpa.causal.bottom_right` (causal aligned bottom-right, as flash-attn's causal=True)"

    def sdpa(self, q, k, v, *, causal=None, **options):
        return super().sdpa(q, k, v, causal="bottom_right" if causal else None, **options)


class ScaleIgnoredMutant(Mutant):
    """An explicit ``scale`` is ignored; ``1/sqrt(D_qk)`` is always used."""

    breaks = "sdpa.scale"
    convention = "the default scale 1/sqrt(D_qk) in place of the scale given"

    def sdpa(self, q, k, v, *, scale=None, **options):
        return super().sdpa(q, k, v, **options)


class DefaultScaleOneOverDMutant(Mutant):
    """The default scale is ``1/D_qk`` instead of ``1/sqrt(D_qk)``."""

    breaks = "sdpa.scale"
    convention = "a default scale of 1/D_qk (not 1/sqrt(D_qk))"

    def sdpa(self, q, k, v, *, scale=None, **options):
        return super().sdpa(q, k, v, scale=1.0 / q.shape[-1] if scale is None else scale, **options)


class WindowOffByOneMutant(Mutant):
    """The left window bound is exclusive: window ``(w - 1, 0)`` sees ``w + 1`` keys."""

    breaks = "sdpa.window"

    def sdpa(self, q, k, v, *, window=None, **options):
        if window is not None and window[0] >= 0:
            window = (window[0] + 1, window[1])
        return super().sdpa(q, k, v, window=window, **options)


class GqaModuloMutant(Mutant):
    """GQA maps query head ``h`` to KV head ``h % H_kv`` (tiling, ONNX's first version)."""

    breaks = "sdpa.gqa"
    convention = "GQA heads tiled: query head h reads KV head h mod H_kv (repeat, not repeat_interleave)"

    def sdpa(self, q, k, v, **options):
        reps = q.shape[1] // k.shape[1]
        return super().sdpa(q, np.tile(k, (1, reps, 1, 1)), np.tile(v, (1, reps, 1, 1)), **options)


class MaskFirstHeadOnlyMutant(Mutant):
    """A per-head boolean mask is read from head 0 for every head."""

    breaks = "sdpa.mask"

    def sdpa(self, q, k, v, *, mask=None, **options):
        if mask is not None and mask.ndim == 4 and mask.shape[1] > 1:
            mask = np.broadcast_to(mask[:, :1], mask.shape)
        return super().sdpa(q, k, v, mask=mask, **options)


class BiasBeforeScaleMutant(Mutant):
    """The bias is added before scaling: ``scale * (q.k + bias)``."""

    breaks = "sdpa.bias"

    def sdpa(self, q, k, v, *, bias=None, scale=None, **options):
        if bias is not None:
            scale_value = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
            bias = (bias.astype(np.float64) * scale_value).astype(bias.dtype)
        return super().sdpa(q, k, v, bias=bias, scale=scale, **options)


class SoftcapAfterMaskMutant(Mutant):
    """The softcap is applied after masking, so masked keys get score ``-cap`` instead of ``-inf``."""

    breaks = "sdpa.softcap"
    convention = "the softcap applied after the mask (masked keys score -softcap, not -inf)"

    def sdpa(self, q, k, v, *, return_lse=False, softcap=None, **options):
        if softcap is None:
            return super().sdpa(q, k, v, return_lse=return_lse, **options)
        problem = prepare(q, k, v, **options)
        rows, cols = range(problem.n_q), range(problem.n_k)
        s = np.where(visible(problem, rows, cols), scores(problem, rows, cols), -np.inf)
        s = softcap * np.tanh(s / softcap)
        out, lse = softmax_average(s, np.ones_like(s, dtype=bool), problem.v)
        return _finish(q, out, lse, return_lse)


class SoftcapAfterBiasMutant(Mutant):
    """The softcap is applied to ``score + bias`` instead of to the score alone."""

    breaks = "sdpa.softcap"
    convention = "the softcap applied to score + bias (not to the score alone)"
    needs = ("sdpa.softcap", "sdpa.bias")

    def sdpa(self, q, k, v, *, return_lse=False, softcap=None, bias=None, **options):
        if softcap is None or bias is None:
            return super().sdpa(q, k, v, return_lse=return_lse, softcap=softcap, bias=bias, **options)
        problem = prepare(q, k, v, bias=bias, **options)
        rows, cols = range(problem.n_q), range(problem.n_k)
        s = softcap * np.tanh(scores(problem, rows, cols) / softcap)
        out, lse = softmax_average(s, visible(problem, rows, cols), problem.v)
        return _finish(q, out, lse, return_lse)


class NoMaxSubtractionMutant(Mutant):
    """Softmax without subtracting the row maximum: overflows at large magnitudes."""

    breaks = "sdpa"

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        problem = prepare(q, k, v, **options)
        rows, cols = range(problem.n_q), range(problem.n_k)
        vis = visible(problem, rows, cols)
        dtype = np.float32 if q.dtype == np.float32 else np.float64
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            e = np.where(vis, np.exp(scores(problem, rows, cols).astype(dtype)), 0.0)
            total = e.sum(axis=-1, keepdims=True)
            out = weighted_values(e / np.where(total > 0, total, 1.0), vis, problem.v)
            lse = np.log(total)[..., 0]
        return _finish(q, out, lse, return_lse)


class NanForFullyMaskedMutant(Mutant):
    """Rows with no visible key return NaN (0/0), as PyTorch's SDPA did on some paths."""

    breaks = "sdpa.fully_masked"

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        out, lse = ref.sdpa(q, k, v, return_lse=True, **options)
        out[np.isneginf(lse)] = np.nan
        return _finish(q, out, lse, return_lse)


class DropsPartialKeyTileMutant(Mutant):
    """Keys past the last full tile of 64 are dropped when ``N_k`` is not a multiple of 64."""

    breaks = "sdpa"

    def sdpa(self, q, k, v, *, kv_lens=None, **options):
        covered = (k.shape[2] // 64) * 64
        lens = np.full(k.shape[0], k.shape[2]) if kv_lens is None else kv_lens
        return super().sdpa(q, k, v, kv_lens=np.minimum(lens, covered), **options)


class LseBase2Mutant(Mutant):
    """The LSE is returned in base 2 (the Triton tutorial keeps it so internally)."""

    breaks = "sdpa.lse"
    convention = "the LSE in base 2 (log2 of the softmax denominator, as the Triton tutorial keeps it)"

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        out, lse = ref.sdpa(q, k, v, return_lse=True, **options)
        return _finish(q, out, lse / math.log(2), return_lse)


class Float16AccumulationMutant(Mutant):
    """Scores, softmax and the weighted sum are computed and accumulated in float16."""

    breaks = "sdpa"

    def sdpa(self, q, k, v, *, return_lse=False, **options):
        problem = prepare(q, k, v, **options)
        with np.errstate(over="ignore", invalid="ignore"):
            out, lse = attend(problem, range(problem.n_q), range(problem.n_k), Arithmetic(np.float16, np.float16))
        return _finish(q, out, lse, return_lse)


class PaddingIgnoresKvLensMutant(Mutant):
    """``kv_lens`` is ignored: padded keys are attended to."""

    breaks = "sdpa.padding"

    def sdpa(self, q, k, v, *, kv_lens=None, **options):
        return super().sdpa(q, k, v, **options)


class AlibiTopLeftMutant(Mutant):
    """ALiBi distances are measured top-left (``|i - j|``), ignoring the bottom-right offset."""

    breaks = "sdpa.alibi"
    convention = "ALiBi distances aligned top-left, |i - j| (not |i + offset - j|)"

    def sdpa(self, q, k, v, *, alibi_slopes=None, bias=None, **options):
        if alibi_slopes is not None:
            i, j = np.arange(q.shape[2])[:, None], np.arange(k.shape[2])[None, :]
            slopes = np.broadcast_to(alibi_slopes, (q.shape[0], q.shape[1]))[:, :, None, None]
            alibi = -slopes * np.abs(i - j)
            bias = alibi if bias is None else bias.astype(np.float64) + alibi
        return super().sdpa(q, k, v, bias=bias, **options)


class DefaultScaleFromDvMutant(Mutant):
    """The default scale is ``1/sqrt(D_v)``: the value head dim taken for the query/key one."""

    breaks = "sdpa.scale"
    convention = "a default scale of 1/sqrt(D_v) (not 1/sqrt(D_qk))"

    def sdpa(self, q, k, v, *, scale=None, **options):
        return super().sdpa(q, k, v, scale=1.0 / math.sqrt(v.shape[-1]) if scale is None else scale, **options)


class WindowTopLeftMutant(Mutant):
    """The sliding window is aligned top-left, as ONNX's ``Attention`` aligns it without a KV
    cache, where bottom-right was asked for."""

    breaks = "sdpa.window"
    convention = "`sdpa.window.top_left` (the window aligned top-left, ONNX Attention without a cache)"

    def sdpa(self, q, k, v, *, window_align=None, **options):
        return super().sdpa(q, k, v, window_align="top_left", **options)


class WindowBottomRightForTopLeftMutant(Mutant):
    """``window_align="top_left"`` is ignored: the window stays bottom-right (flash-attn's)."""

    breaks = "sdpa.window.top_left"
    convention = "`sdpa.window` (the window aligned bottom-right, as flash-attn's window_size)"

    def sdpa(self, q, k, v, *, window_align=None, **options):
        return super().sdpa(q, k, v, **options)


class WindowIgnoresLengthsMutant(Mutant):
    """The window is aligned with ``N_k - N_q`` even where ``q_lens``/``kv_lens`` give other
    effective lengths: right without lengths, and right with lengths but no window."""

    breaks = "sdpa.padding"
    needs = ("sdpa.window", "sdpa.padding")

    def sdpa(self, q, k, v, *, window=None, **options):
        if window is not None and tuple(window) != (-1, -1) and ("q_lens" in options or "kv_lens" in options):
            left, right = window
            i, j = np.arange(q.shape[2])[:, None], np.arange(k.shape[2])[None, :]
            at = i + k.shape[2] - q.shape[2]
            inside = ((left < 0) | (j >= at - left)) & ((right < 0) | (j <= at + right))
            inside = np.broadcast_to(inside, (1, 1) + inside.shape)
            options["mask"] = inside & options["mask"] if options.get("mask") is not None else inside
            window = None
        return super().sdpa(q, k, v, window=window, **options)


class MaskStandInMutant(Mutant):
    """Hidden keys get the finite score -1e4 instead of -inf (a common kernel shortcut): right at
    ordinary scores, wrong where visible scores are more negative than the stand-in."""

    breaks = "sdpa.mask"

    def sdpa(self, q, k, v, *, mask=None, bias=None, **options):
        if mask is not None:
            stand_in = np.where(mask, 0.0, -1e4)
            bias = stand_in if bias is None else bias.astype(np.float64) + stand_in
        return super().sdpa(q, k, v, bias=bias, **options)
