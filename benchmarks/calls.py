"""Inputs of a case and the call each role times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from attnspec import Unsupported
from benchmarks.cases import Case, mask_options, scores_floor

NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def shapes(case: Case) -> dict[str, tuple[int, ...]]:
    """The arrays a case reads: q, k, v, and for backward rows ``dout`` (the output's shape)."""
    n_q = 1 if case.kind == "decode" else case.n
    out = {
        "q": (case.b, case.h, n_q, case.d),
        "k": (case.b, case.kv_heads, case.n, case.d),
        "v": (case.b, case.kv_heads, case.n, case.d),
    }
    return out | ({"dout": out["q"]} if case.kind == "backward" else {})


def inputs(case: Case, backend, seed: int) -> dict[str, Any]:
    """Random q, k, v in the case's dtype, as the backend's arrays. Where those are torch tensors
    they are drawn on the backend's device (a 128k-key cache drawn in NumPy takes seconds); any other
    backend gets NumPy arrays through its ``to_native``."""
    probe = backend.to_native(np.zeros(1, np.float32))
    if type(probe).__module__.startswith("torch"):
        return _torch_inputs(case, probe.device, seed)
    rng = np.random.default_rng(seed)
    arrays = {
        name: rng.standard_normal(shape, dtype=np.float32).astype(NUMPY_DTYPES[case.dtype])
        for name, shape in shapes(case).items()
    }
    native = {name: backend.to_native(a) for name, a in arrays.items()}
    lens = np.full(case.b, case.n, np.int64)
    native["cache_lens"] = lens if case.lens == "host" else backend.to_native(lens)
    return native


def _torch_inputs(case: Case, device, seed: int) -> dict[str, Any]:
    import torch

    from attnspec.backends._torch_arrays import TORCH_DTYPES

    gen = torch.Generator(device=device).manual_seed(seed)
    out = {
        name: torch.randn(shape, generator=gen, device=device, dtype=TORCH_DTYPES[case.dtype])
        for name, shape in shapes(case).items()
    }
    # lengths on the device cost a backend that reads them on the host a synchronisation per call
    out["cache_lens"] = torch.full(
        (case.b,), case.n, dtype=torch.int64, device="cpu" if case.lens == "host" else device
    )
    return out


def call(case: Case, role: str, backend, data: dict) -> Callable[[], Any]:
    """What ``role`` times on ``case``: ``backend.sdpa``/``backend.decode`` with the case's options,
    forward + backward on backward rows (:func:`.cases.backward_cases`), or the floor (``backend`` unused)."""
    q, k, v = data["q"], data["k"], data["v"]
    if role == "floor":
        return lambda: scores_floor(q, k, case.causal)
    if case.kind == "decode":
        if role == "sdpa-default":  # SDPA enable_gqa=True, no mask: the one query sees every key
            return lambda: backend.sdpa(q, k, v)
        return lambda: backend.decode(q, k, v, cache_lens=data["cache_lens"], num_splits=case.splits)
    opts = {name: value for name, value in mask_options(case, role).items() if value is not None}
    if case.kind == "backward":
        return _autograd(backend, data, opts) if role == "sdpa-default" else _backward(backend, data, opts)
    return lambda: backend.sdpa(q, k, v, **opts)


def _autograd(backend, data: dict, opts: dict) -> Callable[[], Any]:
    """SDPA's forward and ``torch.autograd.grad`` through it: the leaves made once, outside the timing."""
    import torch

    leaves = tuple(data[name].detach().requires_grad_() for name in ("q", "k", "v"))

    def step():
        with torch.enable_grad():
            return torch.autograd.grad(backend.sdpa(*leaves, **opts), leaves, data["dout"])

    return step


def _backward(backend, data: dict, opts: dict) -> Callable[[], Any]:
    """The backend's ``sdpa_backward`` (its own forward, then the gradients); declined without one."""
    if not callable(getattr(backend, "sdpa_backward", None)):
        raise Unsupported(f"{backend.name} has no sdpa_backward")
    return lambda: backend.sdpa_backward(data["q"], data["k"], data["v"], data["dout"], **opts)
