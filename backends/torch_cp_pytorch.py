"""``torch-cp``: PyTorch's own context-parallel ring attention under the ``cp.*`` clauses.

``torch.distributed.tensor.experimental.context_parallel`` shards the buffers a model names and,
inside its context, sends every SDPA kernel call to one function: ``_templated_ring_attention``
(``torch/distributed/tensor/experimental/_context_parallel/_attention.py``), which rotates K/V
between the ranks (``_cp_options.rotate_method``: all-gather by default), decides per step which
part of the shard pair is computed (``_is_causal_behavior``; the round-robin load balance when
``_cp_options.enable_load_balance``), and merges the partial results in float32 by their LSE
(``_SDPAMerger``). That function is what runs here, on each rank of the ``torch-ring`` worker
pool (:mod:`attnspec.backends.torch_cp`), with the rank's shards as the suite gives them and
PyTorch's own local kernel: the flash kernel of CUDA (float16, bfloat16) or of the CPU
(``_scaled_dot_product_flash_attention_for_cpu``, which the public context manager does not
dispatch: on the CPU the ring function is called directly, as the context manager would).

The suite's options map onto PyTorch's as a model would set them:

- ``layout``: ``"zigzag"`` is PyTorch's round-robin layout (rank ``r`` holds chunks ``r`` and
  ``2P - 1 - r``), run with ``enable_load_balance = True`` under a causal mask; ``"contiguous"``
  with ``False``. Without a causal mask the layout does not change the result and PyTorch refuses
  load balancing, so it is off.
- GQA: the ring kernels take no ``enable_gqa``: K/V heads are repeated over their query heads
  before the call, as models using context parallelism do.
- ``seq_lens``: PyTorch's context parallelism takes no lengths and no mask; lengths short of
  ``N`` are declined (``cp.lengths`` is not declared).
"""

from __future__ import annotations

import numpy as np

from attnspec.backends.torch_cp import TorchRing, _tensors
from attnspec.contract import BackendError, Unsupported

PRIVATE_MODULE = "torch.distributed.tensor.experimental._context_parallel._attention"


def _ring_module():
    """PyTorch's module holding the ring function; BackendError where this PyTorch has none."""
    import importlib

    try:
        module = importlib.import_module(PRIVATE_MODULE)
        module._templated_ring_attention  # noqa: B018 (its presence is the check)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"torch-cp needs PyTorch's context parallelism ({PRIVATE_MODULE}): {exc}") from None
    return module


def _local_kernel(device):
    """PyTorch's flash kernel for the device, and the keyword arguments the ring passes on to it."""
    import torch

    aten = torch.ops.aten
    if device.type == "cuda":
        return aten._scaled_dot_product_flash_attention, {"dropout_p": 0.0}
    return aten._scaled_dot_product_flash_attention_for_cpu, {"dropout_p": 0.0}


def ring_rank(task, rank: int, group, device):
    """One rank of PyTorch's ring attention: ``(out, lse)`` of its shard as NumPy arrays."""
    import torch

    from attnspec.backends import _torch_arrays as arrays

    cp = _ring_module()
    q, k, v = _tensors(task, device)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    causal = task["causal"]
    op, kwargs = _local_kernel(device)
    saved = cp._cp_options.enable_load_balance
    cp._cp_options.enable_load_balance = causal and task["layout"] == "zigzag"
    try:
        with torch.no_grad():
            out, lse, *_ = cp._templated_ring_attention(
                group, 2, op, q, k, v, is_causal=causal, scale=task["scale"], **kwargs
            )
    finally:
        cp._cp_options.enable_load_balance = saved
    return arrays.to_numpy(out.to(q.dtype)), arrays.to_numpy(lse)


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"torch-cp": "TorchContextParallel"}


class TorchContextParallel(TorchRing):
    """PyTorch's ring attention over ``W`` processes; the variant is ``W`` (``torch-cp:2``)."""

    name = "torch-cp"
    scheme = "ring"
    runner = f"{__name__}:ring_rank"
    clauses = ("cp", "cp.layout.*", "cp.ring", "cp.causal.pairs", "cp.lse")

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(device, variant)
        _ring_module()
        if self.device_type == "cuda":
            self.dtypes = ("float16", "bfloat16")  # its flash kernel's

    def decline(self, q_shape: tuple, v_shape: tuple, seq_lens: np.ndarray) -> None:
        if q_shape[-1] != v_shape[-1]:
            raise Unsupported(
                f"D_v = {v_shape[-1]} != D_qk = {q_shape[-1]}: PyTorch's flash kernels need one head size"
            )
        if np.any(seq_lens != q_shape[0] * q_shape[3]):
            raise Unsupported("seq_lens short of N: PyTorch's context parallelism takes no lengths or mask")
