"""Mutants of :mod:`attnspec.retention`."""

from __future__ import annotations

import numpy as np

from attnspec.backends.mutants.base import Mutant
from attnspec.reference import retention as ref

_DEFINING = ("gammas", "scale", "initial_state")


def _problem(q, k, v, kwargs: dict) -> ref.Problem:
    return ref.prepare(q, k, v, **{n: kwargs[n] for n in _DEFINING if n in kwargs})


def _finish(q, out, state, return_state: bool):
    out = np.asarray(out).astype(q.dtype)
    return (out, np.asarray(state).astype(q.dtype)) if return_state else out


class DecayOneStepTooManyMutant(Mutant):
    """The parallel form's decay counts from one: ``D[n, m] = gamma^(n - m + 1)``, so the diagonal decays too."""

    breaks = "retention.parallel"

    def retention(self, q, k, v, *, form="parallel", return_state=False, **kwargs):
        if form != "parallel":
            return super().retention(q, k, v, form=form, return_state=return_state, **kwargs)
        p = _problem(q, k, v, kwargs)
        out, state = ref.block(
            p.q,
            p.k,
            p.v,
            p.gammas,
            p.scale,
            p.state,
            powers=lambda g, e, dtype: ref.decay_powers(g, np.asarray(e) + 1, dtype),
        )
        return _finish(q, out, state, return_state)


class HeadDecaysReversedMutant(Mutant):
    """Head ``h`` decays with ``gammas[H - 1 - h]`` (the per-head decays indexed from the wrong end)."""

    breaks = "retention.parallel"

    def retention(self, q, k, v, *, gammas, **kwargs):
        return super().retention(q, k, v, gammas=np.ascontiguousarray(np.asarray(gammas)[::-1]), **kwargs)


class RecurrentReadsStateBeforeUpdateMutant(Mutant):
    """The recurrent form reads the state before adding ``k_n^T v_n``: ``out[n] = scale q_n S_(n-1)``."""

    breaks = "retention.recurrent"

    def retention(self, q, k, v, *, form="parallel", return_state=False, **kwargs):
        if form != "recurrent":
            return super().retention(q, k, v, form=form, return_state=return_state, **kwargs)
        p = _problem(q, k, v, kwargs)
        state, gamma = p.state, p.gammas[:, None, None]
        out = np.empty(p.v.shape)
        for t in range(p.q.shape[2]):
            out[:, :, t] = p.scale * (p.q[:, :, t, None] @ state)[:, :, 0]
            state = gamma * state + p.k[:, :, t, :, None] * p.v[:, :, t, None, :]
        return _finish(q, out, state, return_state)


class ChunkStateNotDecayedMutant(Mutant):
    """The chunkwise form carries ``R_c = R_(c-1) + (chunk's k^T v)``: the cross-chunk state is never decayed."""

    breaks = "retention.chunkwise"

    def retention(self, q, k, v, *, form="parallel", chunk_size=None, return_state=False, **kwargs):
        if form != "chunkwise":
            return super().retention(q, k, v, form=form, chunk_size=chunk_size, return_state=return_state, **kwargs)
        p = _problem(q, k, v, kwargs)
        out, state = np.empty(p.v.shape), p.state
        for start in range(0, p.q.shape[2], chunk_size):
            run = [x[:, :, start : start + chunk_size] for x in (p.q, p.k, p.v)]
            out[:, :, start : start + chunk_size], _ = ref.block(*run, p.gammas, p.scale, state)
            _, inner = ref.block(*run, p.gammas, p.scale, np.zeros_like(state))
            state = state + inner
        return _finish(q, out, state, return_state)


class FactorisedChunkDecayMutant(Mutant):
    """Inside a chunk the decay is factorised, ``q_r`` scaled by ``gamma^r`` and ``k_s`` by ``gamma^(-s)``, in
    the input dtype: one matmul for all pairs, but ``gamma^(-s)`` overflows for small gamma or long chunks."""

    breaks = "retention.chunkwise"

    def retention(self, q, k, v, *, form="parallel", chunk_size=None, return_state=False, **kwargs):
        if form != "chunkwise":
            return super().retention(q, k, v, form=form, chunk_size=chunk_size, return_state=return_state, **kwargs)
        p = _problem(q, k, v, kwargs)
        out, state = np.empty(p.v.shape), p.state
        for start in range(0, p.q.shape[2], chunk_size):
            qc, kc, vc = (x[:, :, start : start + chunk_size] for x in (q, k, v))
            carried, _ = ref.block(qc, kc, np.zeros_like(vc), p.gammas, p.scale, state)  # the cross-chunk term only
            _, state = ref.block(qc, kc, vc, p.gammas, p.scale, state)
            out[:, :, start : start + chunk_size] = carried + _factorised_inner(qc, kc, vc, p.gammas, p.scale)
        return _finish(q, out, state, return_state)


def _factorised_inner(q, k, v, gammas, scale):
    dtype = q.dtype.type
    pos = np.arange(q.shape[2], dtype=dtype)
    g = gammas.astype(dtype)[:, None]
    with np.errstate(all="ignore"):
        up, down = (g**pos)[..., None], (g**-pos)[..., None]
        s = ((q * up) @ np.swapaxes(k * down, -1, -2)) * dtype(scale)
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, dtype(0))
        return (s @ v).astype(np.float64)


class InitialStateNotDecayedMutant(Mutant):
    """The initial state is taken as ``S_0`` rather than ``S_(-1)``: it reaches ``out[n]`` decayed by ``gamma^n``
    instead of ``gamma^(n + 1)``, and the final state by ``gamma^(N - 1)``."""

    breaks = "retention.state"

    def retention(self, q, k, v, *, initial_state=None, return_state=False, **kwargs):
        out, state = ref.retention(q, k, v, return_state=True, **kwargs)
        if initial_state is not None:
            p = _problem(q, k, v, {**kwargs, "initial_state": initial_state})
            n = p.q.shape[2]
            out = out + p.scale * (p.q @ p.state) * ref.decay_powers(p.gammas, np.arange(n))[..., None]
            state = state + ref.decay_powers(p.gammas, max(n - 1, 0))[:, None, None] * p.state
        return _finish(q, out, state, return_state)


class DecaysInReverseOrderMutant(Mutant):
    """``retention_decays`` lists the heads from the slowest decay down: ``1 - 2^(-5 - (H - 1 - h))``."""

    breaks = "retention.multiscale"

    def retention_decays(self, num_heads):
        return ref.retention_decays(num_heads)[::-1].copy()


class ChunkwiseMaterialisesDecayMutant(Mutant):
    """Every form is computed through the parallel form: the ``N x N`` decay matrix and scores are built whole
    (right values, quadratic memory)."""

    breaks = "retention.cost"

    def retention(self, q, k, v, *, form="parallel", chunk_size=None, **kwargs):
        return super().retention(q, k, v, **kwargs)
