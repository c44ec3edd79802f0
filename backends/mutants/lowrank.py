"""Mutants of :mod:`attnspec.lowrank`."""

from __future__ import annotations

import numpy as np

from attnspec import reference as ref
from attnspec.backends.mutants.base import Mutant
from attnspec.reference import lowrank
from attnspec.reference.sdpa import prepare


class LinformerKeysProjectedWithFMutant(Mutant):
    """Linformer projects the keys with ``F`` (the value projection) instead of ``E``."""

    breaks = "linformer"

    def linformer(self, q, k, v, *, e, f, scale=None):
        return super().linformer(q, k, v, e=f, f=f, scale=scale)


class LinformerScoresBeforeProjectionMutant(Mutant):
    """Linformer multiplies ``Q K^T`` first and projects the ``N x N`` scores, ``(Q K^T) E^T``: equal in exact
    arithmetic, quadratic in memory."""

    breaks = "linformer.cost"

    def linformer(self, q, k, v, *, e, f, scale=None):
        p = prepare(q, k, v, scale=scale)
        group = p.h_q // p.h_kv
        e, f = (np.asarray(x, np.float64) for x in (e, f))
        e_rep = np.repeat(e, group, axis=0) if e.ndim == 3 else e
        scores = (p.q @ np.swapaxes(np.repeat(p.k, group, axis=1), -1, -2)) @ np.swapaxes(e_rep, -1, -2) * p.scale
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        return (weights @ np.repeat(lowrank.project(f, p.v), group, axis=1)).astype(q.dtype)


class XlMemoryTopLeftMutant(Mutant):
    """The causal mask over ``[memory; segment]`` is aligned top-left (``j <= i``): early queries lose the memory."""

    breaks = "xl.memory"

    def xl_attention(self, q, k, v, *, mem_k, mem_v, scale=None):
        keys, values = np.concatenate([mem_k, k], axis=2), np.concatenate([mem_v, v], axis=2)
        return ref.sdpa(q, keys, values, causal="top_left", scale=scale).astype(q.dtype)


class XlMemoryOneSegmentTooLongMutant(Mutant):
    """The memory keeps ``mem_len + segment_len`` positions: the update slices before appending the segment."""

    breaks = "xl.recurrence"

    def xl_recurrent(self, q, k, v, *, segment_len, mem_len, scale=None):
        return super().xl_recurrent(q, k, v, segment_len=segment_len, mem_len=mem_len + segment_len, scale=scale)
