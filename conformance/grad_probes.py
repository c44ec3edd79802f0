"""Checks of ``sdpa_backward``: the gradients against the float64 reference, and exact zeros."""

from __future__ import annotations

import numpy as np

from attnspec import reference
from attnspec.conformance.assertions import Checker
from attnspec.conformance.calls import call
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.grad_bounds import gradient_bounds
from attnspec.conformance.probes import visibility, within_limits
from attnspec.reference.sdpa_grad import GRADIENTS, unbroadcast


def gradient_inputs(case: SdpaCase, dtype: str) -> tuple:
    """``(q, k, v, dout, options)``: the case's arrays and a ``dout`` drawn from its seed."""
    q, k, v, options = case.inputs(dtype)
    rng = np.random.default_rng(case.seed + 7919)
    dout = rounded(rng.standard_normal((case.batch, case.h_q, case.n_q, case.d_v)), dtype)
    return q, k, v, dout, options


def call_backward(check: Checker, case: SdpaCase, q, k, v, dout, options: dict) -> tuple:
    """The backend's gradients, checked for their number, shapes and dtypes."""
    __tracebackhide__ = True
    within_limits(case)
    got = call("sdpa_backward", q, k, v, dout, **options)
    got = got if isinstance(got, tuple) else (got,)
    inputs = (q, k, v, options["bias"]) if "bias" in options else (q, k, v)
    names = GRADIENTS[: len(inputs)]
    if len(got) != len(inputs):
        check.fail(f"sdpa_backward returned {len(got)} arrays", case, f"expected {len(inputs)}: {', '.join(names)}")
    for name, grad, x in zip(names, got, inputs, strict=True):
        check.same_shape(grad, x, what=name, case=case)
        check.exact(np.asarray(str(grad.dtype)), np.asarray(str(x.dtype)), what=f"{name} dtype", case=case)
    return got


def check_backward(check: Checker, case: SdpaCase, dtype: str) -> tuple:
    """Every gradient of the case within the tolerance policy of the float64 reference's."""
    __tracebackhide__ = True
    q, k, v, dout, options = gradient_inputs(case, dtype)
    got = call_backward(check, case, q, k, v, dout, options)
    refs = reference.sdpa_grad.sdpa_backward(q, k, v, dout, **options)
    bounds = gradient_bounds(q, k, v, dout, options, dtype, refs)
    for name, grad, ref, bound in zip(GRADIENTS, got, refs, bounds, strict=False):
        check.close(grad, ref, bound, what=name, case=case)
    return got


def check_hidden_gradients(check: Checker, case: SdpaCase, dtype: str) -> None:
    """NaN past the lengths is never read; gradients are exactly 0 wherever no visible pair reaches.

    ``dk``/``dv`` of keys that no query of their group sees, ``dq`` of queries that see no key and
    ``dbias`` where every pair it sums is hidden must be exactly 0; the rest must match the
    reference computed on the clean inputs.
    """
    __tracebackhide__ = True
    q, k, v, dout, options = gradient_inputs(case, dtype)
    vis = visibility(case, q, k, v, options)
    pq, pk, pv, pdout = (x.copy() for x in (q, k, v, dout))
    for b, n in enumerate(options.get("q_lens", ())):
        pq[b, :, n:], pdout[b, :, n:] = np.nan, np.nan
    for b, n in enumerate(options.get("kv_lens", ())):
        pk[b, :, n:], pv[b, :, n:] = np.nan, np.nan
    got = call_backward(check, case, pq, pk, pv, pdout, options)
    refs = reference.sdpa_grad.sdpa_backward(q, k, v, dout, **options)
    bounds = gradient_bounds(q, k, v, dout, options, dtype, refs)
    for name, grad, ref, bound in zip(GRADIENTS, got, refs, bounds, strict=False):
        check.close(grad, ref, bound, what=f"{name} with NaN past the lengths", case=case)
    for name, grad, unreached in zip(GRADIENTS, got, _unreached(case, vis, options), strict=False):
        zeros = np.zeros(int(unreached.sum()))
        check.exact(np.asarray(grad, np.float64)[unreached], zeros, what=f"{name} where hidden", case=case)


def _unreached(case: SdpaCase, vis: np.ndarray, options: dict) -> tuple[np.ndarray, ...]:
    """Where each gradient must be exactly 0: ``(dq, dk, dv[, dbias])`` boolean masks."""
    group = case.h_q // case.h_kv
    no_key = ~np.asarray(vis.any(axis=-1))  # (B, H_q, N_q)
    unseen = ~np.asarray(vis.reshape(case.batch, case.h_kv, group * case.n_q, case.n_k).any(axis=2))  # (B, H_kv, N_k)
    masks = [
        np.broadcast_to(no_key[..., None], (case.batch, case.h_q, case.n_q, case.d_qk)),
        np.broadcast_to(unseen[..., None], (case.batch, case.h_kv, case.n_k, case.d_qk)),
        np.broadcast_to(unseen[..., None], (case.batch, case.h_kv, case.n_k, case.d_v)),
    ]
    if "bias" in options:
        masks.append(unbroadcast(vis.astype(np.float64), np.shape(options["bias"])) == 0)
    return tuple(masks)
