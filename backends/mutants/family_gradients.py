"""Mutants of the families' backward passes (``linear.grad``, ``retention.grad``,
``sparse.block_sparse.grad``): the forward pass right, one step of the backward wrong."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from attnspec.backends.mutants.base import Mutant
from attnspec.reference import linear, linear_grad, retention, retention_grad, sdpa_grad


class _LinearBackward(Mutant):
    """The reference's ``linear.grad``, step by step; each mutant replaces one step (not registered)."""

    def linear_attention_backward(self, q, k, v, dout, **options):
        self.check_dtypes({"q": q, "k": k, "v": v, "dout": dout})
        q64, k64, v64, s0, z0 = linear.validate(q, k, v, **options)
        name, scale = options.get("feature_map", "elu+1"), options.get("scale", 1.0)
        fq, fk = linear.phi(q64, name) * scale, linear.phi(k64, name)
        dnum, dden = self.output_gradients(fq, fk, v64, s0, z0, np.asarray(dout, np.float64), options)
        grads = linear_grad.feature_gradients(fq, fk, v64, s0, z0, dnum, dden, **options)
        grads["dq"] = grads["dq"] * scale * self.phi_prime(q64, name)
        grads["dk"] = grads["dk"] * self.phi_prime(k64, name)
        inputs = {"dq": q, "dk": k, "dv": v, "dinitial_state": options.get("initial_state")}
        inputs["dinitial_normalizer"] = options.get("initial_normalizer")
        return tuple(grads[n].astype(x.dtype) for n, x in inputs.items() if x is not None)

    def output_gradients(self, fq, fk, v, s0, z0, dout, options):
        return linear_grad.output_gradients(fq, fk, v, s0, z0, dout, **options)

    def phi_prime(self, x, name):
        return linear_grad.phi_prime(x, name)


class LinearDenominatorHeldConstantMutant(_LinearBackward):
    """The normaliser is treated as a constant in the backward pass: ``dden = 0`` (a detached ``den``)."""

    breaks = "linear.grad"

    def output_gradients(self, fq, fk, v, s0, z0, dout, options):
        dnum, dden = super().output_gradients(fq, fk, v, s0, z0, dout, options)
        return dnum, np.zeros_like(dden)


class LinearFeatureMapDerivativeMissingMutant(_LinearBackward):
    """``dq = scale df_q`` and ``dk = df_k``: the chain rule stops at the features (``phi' = 1``)."""

    breaks = "linear.grad"

    def phi_prime(self, x, name):
        return np.ones_like(x)


class RetentionDecayMissingInDkDvMutant(Mutant):
    """``dk`` and ``dv`` are those of ``g = 1`` (the causal mask kept, the decay ``g^(n - m)`` lost)."""

    breaks = "retention.grad"

    def retention_backward(self, q, k, v, dout, *, gammas, initial_state=None, scale=None, **form_options):
        self.check_dtypes({"q": q, "k": k, "v": v, "dout": dout})
        problem = retention.prepare(q, k, v, gammas=gammas, scale=scale, initial_state=initial_state)
        dout64 = retention_grad.checked_dout(dout, problem)
        grads = retention_grad.gradients(problem, dout64)
        undecayed = retention_grad.gradients(replace(problem, gammas=np.ones_like(problem.gammas)), dout64)
        grads["dk"], grads["dv"] = undecayed["dk"], undecayed["dv"]
        names = retention_grad.GRADIENTS[: 3 if initial_state is None else 4]
        return tuple(grads[n].astype(q.dtype) for n in names)


class BlockSparseLayoutMissingInBackwardMutant(Mutant):
    """The forward pass is right; the backward recomputes ``P`` over every key (the layout forgotten)."""

    breaks = "sparse.block_sparse.grad"

    def sparse_backward(self, q, k, v, dout, *, pattern, scale=None, **params):
        self.check_dtypes({"q": q, "k": k, "v": v, "dout": dout})
        grads = sdpa_grad.sdpa_backward(q, k, v, dout, scale=scale)
        return tuple(g.astype(x.dtype) for g, x in zip(grads, (q, k, v), strict=True))
