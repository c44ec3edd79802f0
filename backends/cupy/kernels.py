"""The CUDA sources, their instantiations and launch geometry: everything that needs no GPU.

Each kernel is a C++ template in a ``.cu`` file beside this module (``csrc/``); a call needs one
instantiation, named by a C++ expression (``attention_fwd<__nv_bfloat16, 128, 128, 64, 2, false,
__nv_bfloat16>``) and compiled once by NVRTC: by CuPy's ``RawModule`` on the GPU (which caches
the binary on disk), by :mod:`scripts.cupy_compile_check` in CI. Both take the source, options
and name from :func:`program` here, so CI compiles exactly what the backend runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"

#: C++ element types by NumPy dtype name.
CXX_TYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float"}

#: The widest head dim a tile holds (the 16-bit kernel's Q, K and V tiles in shared memory).
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class Instance:
    """One compiled kernel: its source file, template arguments and launch shape."""

    source: str  # file name in csrc/
    kernel: str  # template name
    args: tuple  # template arguments, as C++ text
    threads: int
    shared_bytes: int  # dynamic shared memory per CTA (0: static only)
    block_m: int = 0  # query rows per CTA
    block_n: int = 0  # keys per tile

    @property
    def name(self) -> str:
        return f"{self.kernel}<{', '.join(map(str, self.args))}>"


def padded_head_dim(d_qk: int, d_v: int) -> int:
    """The head-dim tile: both dims rounded up to a multiple of 16 (the mma k step)."""
    return max(16, cdiv(max(d_qk, d_v), 16) * 16)


def tile(dtype: str, head_dim: int, *, rows: int, block: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(BM, BN)`` for a call, from the table or ``flash_forward``'s ``block`` (clamped to it).

    16-bit: 128 x 64 up to head dim 128 (4 warps of 32 rows: :func:`warp_tiles`), 64-row tiles where the call has few
    rows (decode, short sequences: more CTAs to fill the GPU); above head dim 128 at most 64 x 32
    (registers: the O accumulator alone is head_dim / 2 floats a thread). float32: 32 rows per
    CTA, keys in tiles of 32 (16 above head dim 128: static shared memory), whatever ``block``.
    """
    if dtype == "float32":
        return 32, 32 if head_dim <= 128 else 16
    largest = (128, 64) if head_dim <= 128 else (64, 32)
    if block is None:
        block = (64 if rows <= 1024 else 128), 64
    return min(block[0], largest[0]), min(block[1], largest[1])


def warp_tiles(block_m: int, head_dim: int) -> int:
    """m16 tiles per warp: 2 (32 rows, FlashAttention-2's layout: each K and V fragment loaded from
    shared memory serves two tensor-core tiles) for 128-row tiles up to head dim 128, else 1."""
    return 2 if block_m >= 128 and head_dim <= 128 else 1


def attention(
    dtype: str,
    d_qk: int,
    d_v: int,
    *,
    rows: int,
    general: bool,
    partial: bool,
    block: tuple[int, int] | None = None,
    wm: int | None = None,
) -> Instance:
    """The forward kernel for a call: ``general`` if it has a mask, bias, ALiBi or softcap;
    ``partial`` for split-KV partials (float32 outputs for the merge); ``wm`` overrides
    :func:`warp_tiles` (the tuning sweep, ``benchmarks/tune_cupy.py``)."""
    hd = padded_head_dim(d_qk, d_v)
    if hd > MAX_HEAD_DIM:
        raise ValueError(f"head dim {max(d_qk, d_v)} > {MAX_HEAD_DIM}")
    bm, bn = tile(dtype, hd, rows=rows, block=block)
    t = CXX_TYPES[dtype]
    out = "float" if partial else t
    flag = "true" if general else "false"
    if dtype == "float32":
        return Instance("attention_f32.cu", "attention_fwd_f32", (hd, bn, flag, out), 128, 0, bm, bn)
    shared = (bm + 4 * bn) * (hd + 8) * 2  # Q tile + double-buffered K and V, rows padded by 8
    wm = wm or warp_tiles(bm, hd)
    if bm % (16 * wm):
        raise ValueError(f"{bm}-row tiles cannot give each warp {wm} m16 tiles")
    return Instance("attention.cu", "attention_fwd", (t, hd, bm, bn, wm, flag, out), bm * 2 // wm, shared, bm, bn)


def merge(in_dtype: str, out_dtype: str) -> Instance:
    return Instance("merge.cu", "merge_partials", (CXX_TYPES[in_dtype], CXX_TYPES[out_dtype]), 256, 0)


def split_length(n_k: int, num_splits: int, block_n: int) -> tuple[int, int]:
    """``(split_len, splits)``: whole key tiles per split; splits past the last key are not launched."""
    n = max(n_k, 1)
    split_len = cdiv(cdiv(n, num_splits), block_n) * block_n
    return split_len, cdiv(n, split_len)


def grid(inst: Instance, rows: int, heads: int, splits: int) -> tuple[int, int, int]:
    """``(row blocks, B * heads, splits)``."""
    return cdiv(rows, inst.block_m), heads, splits


def cdiv(a: int, b: int) -> int:
    return -(a // -b)


def include_dirs() -> list[str]:
    """``-I`` directories: ``csrc/``, then CUDA's headers (``cuda_bf16.h``), which NVRTC 13 lacks:
    from the ``nvidia-cuda-runtime`` wheel if installed, else the toolkit (``CUDA_PATH``, /usr/local/cuda)."""
    dirs = [str(CSRC)]
    try:
        import nvidia  # the namespace package of NVIDIA's wheels

        for root in nvidia.__path__:
            for sub in ("cu13/include", "cuda_runtime/include"):
                if (Path(root) / sub / "cuda_bf16.h").exists():
                    dirs.append(str(Path(root) / sub))
    except ImportError:
        pass
    for root in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_bf16.h").exists():
            dirs.append(str(Path(root) / "include"))
    return dirs


def program(inst: Instance) -> tuple[str, tuple[str, ...]]:
    """``(source text, NVRTC options)`` of an instance (the architecture is added by the caller)."""
    code = (CSRC / inst.source).read_text()
    return code, ("-std=c++17", *(f"-I{d}" for d in include_dirs()))
