"""``sage``: SageAttention 1.0.6 (``sageattn``: 8-bit quantised ``Q K^T`` in Triton) under test.

``sageattn(q, k, v, tensor_layout="HND", is_causal, sm_scale, smooth_k=True)`` is called as a
model calls it, with ``q, k, v`` ``(B, H, N, D)`` (its ``HND`` layout, the spec's): it subtracts
the key mean over the sequence (``smooth_k``, which softmax cancels), quantises ``q * sm_scale *
log2(e)`` per block of 128 query rows and ``k`` per block of 64 keys to int8 (one float32 scale
per block), multiplies the int8 blocks, takes ``exp2`` with an online softmax, and multiplies the
probabilities, rounded to float16, by ``V`` in float16 (``V`` of bfloat16 and float32 inputs is
rounded to float16 first), each 64-key block's ``P V`` accumulated in float16.

Declared: ``sdpa``, ``sdpa.scale``, ``sdpa.gqa`` (``H_q`` a multiple of ``H_kv``, as the spec's),
``sdpa.causal.top_left`` and ``sdpa.causal.bottom_right`` (``is_causal``; only ``N_q = N_k``, where
the two agree: other lengths are declined, as ``sageattn`` asserts). Declined: head dims other than
64, 96 and 128 (``sageattn`` asserts them), ``D_v != D_qk``. No LSE, mask, window, softcap or bias.

A quantised kernel cannot meet the suite's 16-bit tolerance (its error is set by int8 steps of
``max|x| / 127`` per block, not by the dtype's rounding): its failures are the finding, each with
its error beside the allowed bound in the report; the 16-bit tolerance is not loosened for it. It
declares the ``int8`` tolerance class (:func:`attnspec.tolerance.quantised_tolerance`: its own
arithmetic, int8 ``Q``/``K`` per 128/64 rows and ``P V`` in float16, done plainly), so a report
also carries its verdict under that class, in a column of its own that never counts as a pass.
``k`` is copied before the call: ``sageattn`` subtracts the key mean from the caller's ``k`` in place.

On the CPU the kernels run in Triton's interpreter (``:interpreter`` in reports), with
:func:`attnspec.backends.fla.interpret_third_party`, and ``sageattn``'s ``q.is_cuda`` assertion is
met by viewing ``q`` as a tensor subclass whose ``is_cuda`` is True (interpreter only; nothing else
of the function changes). Needs ``pip install attnspec[sage]``.
"""

from __future__ import annotations

import torch

from attnspec import validation as _checks
from attnspec.backends import _torch_arrays as arrays
from attnspec.backends.fla import interpret_third_party, select_mode
from attnspec.contract import Backend, BackendError, Unsupported

HEAD_DIMS = (64, 96, 128)


class _ReportsCuda(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` is True: ``sageattn`` asserts it; interpreter mode only."""

    @property
    def is_cuda(self):
        return True


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"sage": "SageBackend"}


class SageBackend(Backend):
    name = "sage"
    clauses = ("sdpa", "sdpa.scale", "sdpa.gqa", "sdpa.causal.top_left", "sdpa.causal.bottom_right")
    dtypes = ("float16", "bfloat16", "float32")
    devices = ("cuda", "cpu")
    max_head_dim = 128
    tolerance_class = "int8"  # reported beside the 16-bit verdict, never instead of it

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant is not None:
            raise BackendError(f"the sage backend has no variants; got {variant!r}")
        self.interpret = not self.device.startswith("cuda")
        select_mode(self.interpret, "sage")
        try:
            from sageattention import sageattn
        except ImportError as exc:
            raise BackendError(f"the sage backend needs SageAttention: pip install 'attnspec[sage]' ({exc})") from None
        interpret_third_party("sageattention")
        self.sageattn = sageattn
        if self.interpret:
            self.name = "sage:interpreter"
        from importlib.metadata import PackageNotFoundError, version

        try:
            self.version = version("sageattention")
        except PackageNotFoundError:
            self.version = "unknown"

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def sdpa(self, q, k, v, *, scale=None, causal=None):
        for name, x in (("q", q), ("k", k), ("v", v)):
            _checks.dims(name, arrays.tensor(name, x), 4)
        _checks.same_dtype(q=q, k=k, v=v)
        _, n_k = _checks.kv_shapes(q, k, v)
        n_q, d = q.shape[2], q.shape[3]
        causal = _checks.causal(causal)
        scale = d**-0.5 if scale is None else _checks.finite_float("scale", scale)
        if d not in HEAD_DIMS or v.shape[3] != d:
            raise Unsupported(f"D_qk = {d}, D_v = {v.shape[3]}: sageattn takes D_qk = D_v in {HEAD_DIMS}")
        if causal is not None and n_q != n_k:
            raise Unsupported(f"causal with N_q = {n_q} != N_k = {n_k}: sageattn's is_causal needs equal lengths")
        k = k.clone()  # sageattn(smooth_k=True) subtracts the key mean from its argument in place
        if self.interpret:
            q = q.as_subclass(_ReportsCuda)
        out = self.sageattn(q, k, v, tensor_layout="HND", is_causal=causal is not None, sm_scale=scale)
        return torch.Tensor(out) if isinstance(out, _ReportsCuda) else out
