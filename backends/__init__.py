"""Backends: implementations that register against the spec.

One module (or folder) per backend. Each exposes a :class:`attnspec.Backend` subclass or a
factory and names it in a literal ``BACKENDS = {"name": "object"}`` at its top level, which
:data:`attnspec.registry.BUILTINS` collects without importing the module; installed
packages add theirs through the ``attnspec.backends`` entry-point group. :mod:`.mutants` holds
deliberately wrong backends that prove the suite catches what it claims to catch.
"""

#: The forward clauses of ``sdpa`` that a dense attention kernel implements: every option.
SDPA_FORWARD_CLAUSES = (
    "sdpa",
    "sdpa.scale",
    "sdpa.lse",
    "sdpa.fully_masked",
    "sdpa.gqa",
    "sdpa.mask",
    "sdpa.bias",
    "sdpa.softcap",
    "sdpa.alibi",
    "sdpa.causal.*",
    "sdpa.window",
    "sdpa.padding",
)

#: The ``flash.*`` clauses over contiguous arrays (tiling, merging, split-KV, decoding from a
#: ``(B, H_kv, N_max, D)`` cache): what a fused kernel without a page-table path declares. The
#: paged KV cache (``flash.paged*``, operation ``paged_decode``) is declared apart.
FLASH_CONTIGUOUS_CLAUSES = ("flash.tiled", "flash.memory", "flash.merge", "flash.split_kv", "flash.decode")


def kernel_tile(block: int) -> int:
    """``flash_forward``'s block size as a fused kernel's tile: the power of two from 16 (a tensor-core
    tile's least) to 128 nearest at or above it."""
    return min(128, max(16, 1 << (block - 1).bit_length()))


def decline_unsupported(problem, max_head_dim: int) -> None:
    """``Unsupported`` for what the fused kernels (``triton``, ``cupy``) do not implement: a window
    aligned top-left, head dims past their widest tile. ``problem`` has ``q``, ``v``, ``window`` and
    ``window_top_left``."""
    from attnspec.contract import Unsupported

    if problem.window is not None and problem.window_top_left:
        raise Unsupported("window_align='top_left' (sdpa.window.top_left): the kernels align windows bottom-right")
    d = max(problem.q.shape[-1], problem.v.shape[-1])
    if d > max_head_dim:
        raise Unsupported(f"head dim {d} > {max_head_dim}: no tile of this backend holds it")
