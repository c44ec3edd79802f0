"""What the adapters of Hugging Face transformers' attention modules share.

Each adapter (``transformers_bigbird.py``, ``_t5.py``, ``_longformer.py``, ``_reformer.py``) builds
one module from a config (random weights, no hub), replaces only what lies outside the clause
(the projections, by exact look-ups of the given ``q, k, v``) and runs the module's own forward
or inner routine, so the numerics under test are the module's.
"""

from __future__ import annotations

import importlib
import math

import torch

from attnspec import validation as _checks
from attnspec.backends import _torch_arrays as arrays
from attnspec.contract import Backend, BackendError, Unsupported


def model_module(name: str):
    """``transformers.models.<name>.modeling_<name>``, or a BackendError saying what to install."""
    try:
        return importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    except ImportError as exc:
        raise BackendError(
            f"the transformers module backends need Hugging Face transformers: pip install transformers ({exc})"
        ) from None


class HfModuleBackend(Backend):
    """Arrays as torch tensors; the version of transformers in reports."""

    dtypes = ("float64", "float32", "float16", "bfloat16")
    devices = ("cpu", "cuda")
    model = ""  # the transformers.models subpackage the adapter runs

    def __init__(self, device: str | None = None):
        super().__init__(arrays.default_device(device))
        self.modeling = model_module(self.model)
        import transformers

        self.version = transformers.__version__

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)


def self_attention(q, k, v) -> tuple[int, int, int, int]:
    """``(B, H, N, D)`` of a self-attention call the modules can take: one head count, N_q = N_k, D_v = D."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _checks.dims(name, arrays.tensor(name, x), 4)
    _checks.same_dtype(q=q, k=k, v=v)
    _checks.kv_shapes(q, k, v)
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"N_q = {q.shape[2]} > N_k = {k.shape[2]}: rows before position 0 have no pattern")
    if q.shape[2] != k.shape[2]:
        raise Unsupported("N_q < N_k: the module is self-attention over one sequence")
    if q.shape[1] != k.shape[1]:
        raise Unsupported("grouped heads (H_q != H_kv): the module has one head count")
    if v.shape[-1] != q.shape[-1]:
        raise Unsupported("D_v != D_qk: the module's heads have one size")
    return tuple(q.shape)


def module_scale(scale, d: int) -> None:
    """The modules scale by ``1 / sqrt(D)`` themselves: only that scale maps."""
    if scale is not None and not math.isclose(scale, d**-0.5, rel_tol=1e-15):
        raise Unsupported(f"scale={scale}: the module always scales by 1/sqrt(D_qk)")


def heads_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, D)`` -> ``(B, N, H * D)``, the layout of a projection's output."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class RowLookup(torch.nn.Module):
    """A projection replaced by a look-up: the hidden state of token ``(b, n)`` carries the index
    ``b * N + n`` in its first feature, and the "projection" returns that token's row of ``table``
    (``(B * N, E)``). Exact, and it follows the module wherever it gathers hidden states (Longformer
    projects its global tokens' states again, in a tensor of their own)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.table[hidden[..., 0].long()].clone()  # a copy: the modules scale it in place


def index_states(b: int, n: int, e: int, device) -> torch.Tensor:
    """Hidden states ``(B, N, E)`` in float64 (exact indices) whose first feature is ``b * N + n``."""
    states = torch.zeros(b, n, e, dtype=torch.float64, device=device)
    states[..., 0] = torch.arange(b * n, dtype=torch.float64, device=device).view(b, n)
    return states
