"""Checks of the families' backward passes (``linear.grad``, ``retention.grad``,
``sparse.block_sparse.grad``): every gradient against the float64 reference, and exact zeros."""

from __future__ import annotations

import numpy as np

from attnspec.conformance.assertions import Checker
from attnspec.conformance.calls import call
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.grad_bounds import gradient_bounds, linear_gradient_bounds, retention_gradient_bounds
from attnspec.conformance.linear_cases import LinearCase
from attnspec.conformance.retention_cases import RetentionCase
from attnspec.conformance.sparse_cases import SparseCase
from attnspec.conformance.target import current, decline
from attnspec.reference.linear_grad import linear_attention_backward
from attnspec.reference.retention_grad import retention_backward
from attnspec.reference.sparse_grad import dense_options, sparse_backward


def random_dout(seed: int, shape: tuple, dtype: str) -> np.ndarray:
    """The gradient of the output, drawn from the case's seed, in ``dtype``."""
    return rounded(np.random.default_rng([seed, 7919]).standard_normal(shape), dtype)


def call_gradients(check: Checker, case, op: str, inputs: dict, *args, **kwargs) -> tuple:
    """``backend.<op>(*args, **kwargs)``, checked to return one array per named input, each of its shape and dtype."""
    __tracebackhide__ = True
    backend = current().backend
    n = max(getattr(case, name, 0) for name in ("n", "n_q", "n_k"))
    d = max(getattr(case, name, 0) for name in ("d_qk", "d_k", "d_v"))
    if backend.max_seq_len is not None and n > backend.max_seq_len:
        decline(f"N = {n} is beyond the declared max_seq_len {backend.max_seq_len}")
    if backend.max_head_dim is not None and d > backend.max_head_dim:
        decline(f"D = {d} is beyond the declared max_head_dim {backend.max_head_dim}")
    got = call(op, *args, **kwargs)
    got = got if isinstance(got, tuple) else (got,)
    names = [f"d{name}" for name in inputs]
    if len(got) != len(inputs):
        check.fail(f"{op} returned {len(got)} arrays", case, f"expected {len(inputs)}: {', '.join(names)}")
    for name, grad, x in zip(names, got, inputs.values(), strict=True):
        check.same_shape(grad, x, what=name, case=case)
        check.exact(np.asarray(str(grad.dtype)), np.asarray(str(x.dtype)), what=f"{name} dtype", case=case)
    return got


def compare(check: Checker, case, inputs: dict, got: tuple, refs: tuple, bounds: tuple) -> None:
    """Each returned gradient within its bound of the reference's, named after its input."""
    __tracebackhide__ = True
    for name, grad, ref, bound in zip(inputs, got, refs, bounds, strict=True):
        check.close(grad, ref, bound, what=f"d{name}", case=case)


def check_linear_backward(check: Checker, case: LinearCase, dtype: str, form: str, chunk_size=None) -> tuple:
    """The backend's ``linear_attention_backward`` in ``form`` against the reference's gradients."""
    __tracebackhide__ = True
    q, k, v, state = case.inputs(dtype)
    dout = random_dout(case.seed, (case.batch, case.heads, case.n_q, case.d_v), dtype)
    inputs = {"q": q, "k": k, "v": v, **state}
    label = (case, dict(form=form, chunk_size=chunk_size))
    options = case.options()
    got = call_gradients(
        check,
        label[0],
        "linear_attention_backward",
        inputs,
        q,
        k,
        v,
        dout,
        **options,
        **state,
        form=form,
        chunk_size=chunk_size,
    )
    refs = linear_attention_backward(q, k, v, dout, **options, **state)
    compare(check, label, inputs, got, refs, linear_gradient_bounds(q, k, v, dout, options, state, dtype, refs))
    return got


def check_retention_backward(check: Checker, case: RetentionCase, dtype: str) -> tuple:
    """The backend's ``retention_backward`` in the case's form against the reference's gradients."""
    __tracebackhide__ = True
    q, k, v, kwargs = case.inputs(dtype)
    dout = random_dout(case.seed, v.shape, dtype)
    inputs = {"q": q, "k": k, "v": v}
    if kwargs["initial_state"] is not None:
        inputs["initial_state"] = kwargs["initial_state"]
    got = call_gradients(check, case, "retention_backward", inputs, q, k, v, dout, **kwargs)
    refs = retention_backward(q, k, v, dout, **kwargs)
    compare(check, case, inputs, got, refs, retention_gradient_bounds(q, k, v, dout, kwargs, dtype, refs))
    return got


def check_block_sparse_backward(check: Checker, case: SparseCase, dtype: str) -> None:
    """``sparse_backward`` against ``sdpa.grad`` with the layout's mask; exact zeros at masked blocks."""
    __tracebackhide__ = True
    q, k, v, kwargs = case.inputs(dtype)
    dout = random_dout(case.seed, (case.batch, case.h_q, case.n_q, case.d_v), dtype)
    inputs = {"q": q, "k": k, "v": v}
    got = call_gradients(check, case, "sparse_backward", inputs, q, k, v, dout, **kwargs)
    refs = sparse_backward(q, k, v, dout, **kwargs)
    options = dense_options(q, k, v, kwargs["pattern"], kwargs["scale"], _params(kwargs))
    compare(check, case, inputs, got, refs, gradient_bounds(q, k, v, dout, options, dtype, refs))
    for name, grad, hidden in zip(("dq", "dk", "dv"), got, _unreached(options["mask"], q, k, v), strict=True):
        zeros = np.zeros(int(hidden.sum()))
        check.exact(np.asarray(grad, np.float64)[hidden], zeros, what=f"{name} at masked blocks", case=case)


def _params(kwargs: dict) -> dict:
    return {name: x for name, x in kwargs.items() if name not in ("pattern", "scale")}


def _unreached(mask: np.ndarray, q, k, v) -> tuple[np.ndarray, ...]:
    """Where ``dq``, ``dk``, ``dv`` must be exactly 0: rows without keys, keys no row of the group sees."""
    b, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    vis = np.broadcast_to(mask, (b, h_q, n_q, n_k))
    no_key = ~np.asarray(vis.any(axis=-1))
    unseen = ~np.asarray(vis.reshape(b, h_kv, (h_q // h_kv) * n_q, n_k).any(axis=2))
    return (
        np.broadcast_to(no_key[..., None], q.shape),
        np.broadcast_to(unseen[..., None], k.shape),
        np.broadcast_to(unseen[..., None], v.shape),
    )
