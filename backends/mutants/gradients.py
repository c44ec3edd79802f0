"""Mutants of the backward pass: the bugs kernel authors report in FlashAttention-style backwards."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from attnspec.backends.mutants.base import Mutant
from attnspec.reference import sdpa_grad
from attnspec.reference.sdpa import attend, scores, visible


def _bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float64)


class _Backward(Mutant):
    """The reference backward, step by step; each mutant replaces one step (no ``breaks``: not registered)."""

    def sdpa_backward(self, q, k, v, dout, **options):
        self.check_dtypes({"q": q, "k": k, "v": v, "dout": dout})
        problem, d = sdpa_grad.setup(q, k, v, dout, **options)
        p, out = self.forward(problem, options)
        ds = self.score_gradient(problem, p, d, out)
        grads = self.input_gradients(problem, p, self.raw_score_gradient(problem, ds, options.get("softcap")), d)
        results = [grads[name].astype(q.dtype) for name in ("dq", "dk", "dv")]
        if options.get("bias") is not None:
            results.append(self.bias_gradient(ds, np.shape(options["bias"])).astype(options["bias"].dtype))
        return tuple(results)

    def forward(self, problem, options):
        return sdpa_grad.forward(problem)

    def score_gradient(self, problem, p, dout, out):
        return sdpa_grad.score_gradient(problem, p, dout, out)

    def raw_score_gradient(self, problem, ds, softcap):
        return sdpa_grad.raw_score_gradient(problem, ds, softcap)

    def input_gradients(self, problem, p, dr, dout):
        return sdpa_grad.input_gradients(problem, p, dr, dout)

    def bias_gradient(self, ds, shape):
        return sdpa_grad.unbroadcast(ds, shape)


class DsRoundedBeforeDqMutant(_Backward):
    """``dS`` is rounded to bfloat16 before ``dq = scale dS k`` in a float32/float64 kernel."""

    breaks = "sdpa.grad"

    def input_gradients(self, problem, p, dr, dout):
        grads = super().input_gradients(problem, p, dr, dout)
        grads["dq"] = problem.scale * sdpa_grad.per_group(np.matmul, _bf16(dr), problem.k, problem)
        return grads


class LseBase2InBackwardMutant(_Backward):
    """The backward recomputes ``P = exp(S - lse)`` with the LSE saved in base 2 (``lse * log2(e)``)."""

    breaks = "sdpa.grad"

    def forward(self, problem, options):
        rows, cols = range(problem.n_q), range(problem.n_k)
        out, lse = attend(problem, rows, cols)
        final, vis = scores(problem, rows, cols), visible(problem, rows, cols)
        lse2 = np.where(np.isneginf(lse), 0.0, lse / math.log(2))[..., None]
        return np.where(vis, np.exp(np.where(vis, final, 0.0) - lse2), 0.0), out


class DFromRoundedOutputMutant(_Backward):
    """``D = rowsum(dout * out)`` takes ``out`` rounded to bfloat16, in a float32/float64 kernel."""

    breaks = "sdpa.grad"

    def score_gradient(self, problem, p, dout, out):
        return super().score_gradient(problem, p, dout, _bf16(out))


class CausalMissingInBackwardMutant(_Backward):
    """The forward pass is right; the backward recomputes ``P`` without the causal rule."""

    breaks = "sdpa.grad.hidden"

    def forward(self, problem, options):
        _, out = sdpa_grad.forward(problem)
        if problem.causal is None:
            return sdpa_grad.forward(problem)
        unmasked = {**options, "causal": None}
        bare, _ = sdpa_grad.setup(problem.q, problem.k, problem.v, np.zeros_like(out), **unmasked)
        p, _ = sdpa_grad.forward(bare)
        return p, out


class GqaGroupNotSummedMutant(_Backward):
    """``dk`` and ``dv`` of a KV head are those of its group's first query head, not the group's sum."""

    breaks = "sdpa.grad.gqa"

    def input_gradients(self, problem, p, dr, dout):
        grads = super().input_gradients(problem, p, dr, dout)
        group = problem.h_q // problem.h_kv
        first = (slice(None), slice(None, None, group))  # query head g * G of every group
        grads["dk"] = problem.scale * np.swapaxes(dr[first], -1, -2) @ problem.q[first]
        grads["dv"] = np.swapaxes(p[first], -1, -2) @ dout[first]
        return grads


class ScaleMissingInDkMutant(_Backward):
    """``dk = dR^T q``: the scale folded into ``q`` for the forward pass is not applied to ``dk``."""

    breaks = "sdpa.grad.scale"

    def input_gradients(self, problem, p, dr, dout):
        grads = super().input_gradients(problem, p, dr, dout)
        grads["dk"] = grads["dk"] / problem.scale
        return grads


class SoftcapDerivativeMissingMutant(_Backward):
    """``dR = dS``: the softcap's derivative ``1 - tanh(R / c)^2`` is left out."""

    breaks = "sdpa.grad.softcap"

    def raw_score_gradient(self, problem, ds, softcap):
        return ds


class BiasGradientAveragedMutant(_Backward):
    """``dbias`` is averaged, not summed, over the axes the bias was broadcast along."""

    breaks = "sdpa.grad.bias"

    def bias_gradient(self, ds, shape):
        summed = sdpa_grad.unbroadcast(ds, shape)
        return summed * (np.prod(shape) / ds.size)
