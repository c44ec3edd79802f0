"""Compile the Triton kernels for a GPU target without a GPU: the variants the backend launches.

Usage: ``python scripts/triton_compile_check.py [--arch 90]``. Triton's front end and its bundled
``ptxas`` need no device, so a kernel that stops compiling (for the compiled path, which the
interpreter does not exercise: constexpr globals, layouts, tensor descriptors) fails here, on
the CPU, in CI. Arguments are specialised as the launcher specialises them on the GPU (pointers
16-byte aligned, last-dimension strides 1), and a variant whose strides are declared aligned
(``ALIGNED``) must load its tiles in 16-byte vectors (``cp.async`` / ``ld.global.v4``): the check
that :func:`attention.aligned` still does its job. Prints one line per variant and exits non-zero
if any fails.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: the compiled path, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from attnspec.backends.triton import (  # noqa: E402
    attention,
    attention_tma,
    backward,
    block_sparse,
    configs,
    launch,
    launch_backward,
    merge,
)

GENERAL = dict(
    BLOCK_D=64,
    BLOCK_DV=64,
    EVEN_D=True,
    BLOCK_M=128,
    BLOCK_N=64,
    CAUSAL=0,
    WINDOW=False,
    HAS_MASK=False,
    HAS_BIAS=False,
    HAS_ALIBI=False,
    HAS_SOFTCAP=False,
    HAS_Q_LENS=False,
    HAS_KV_LENS=False,
    PACK_GQA=False,
    REVERSE=False,
    PRECISION="tf32",
    ALIGNED=True,
)
#: The backward passes' constants (:mod:`backward`): the general kernel's but its decode-only ones.
BACKWARD = {name: value for name, value in GENERAL.items() if name not in ("PACK_GQA", "REVERSE")}
#: Every option of ``sdpa`` at once, each a constexpr switch of the general and backward kernels.
EVERY_OPTION = dict(
    CAUSAL=1,
    WINDOW=True,
    HAS_MASK=True,
    HAS_BIAS=True,
    HAS_ALIBI=True,
    HAS_SOFTCAP=True,
    HAS_Q_LENS=True,
    HAS_KV_LENS=True,
)


def backward_variants(name: str, overrides: dict, d_qk: int, d_v: int, element: str) -> list[tuple]:
    """Both backward passes of one call, with the tiles, warps and stages the launcher picks for it."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[element]
    widths = dict(BLOCK_D=launch._pow2(d_qk), BLOCK_DV=launch._pow2(d_v))
    return [
        (
            f"backward {kernel.fn.__name__}, {name}",
            kernel,
            {**widths, **overrides, **launch_backward.tiles(cfg)},
            element,
        )
        for kernel, cfg in zip(
            (backward.dkdv_bwd, backward.dq_bwd), configs.backward_gpu(dtype, d_qk, d_v), strict=True
        )
    ]


#: Integers the launcher leaves specialised, at their usual value (contiguous last dimensions).
UNIT_STRIDES = dict(stride_qd=1, stride_kd=1, stride_vd=1, stride_od=1)
#: Head dims stay specialised: 80 and 96 are multiples of 16, as the launcher's specialisation says.
SIXTEENS = ("d_qk", "d_v")
#: (name, kernel, constexpr overrides, element type)
VARIANTS = [
    ("plain bf16", attention.attention_fwd, {}, "bf16"),
    ("causal bottom-right, reversed", attention.attention_fwd, dict(CAUSAL=2, REVERSE=True), "bf16"),
    ("every option", attention.attention_fwd, EVERY_OPTION, "fp16"),
    ("strides not multiples of 16 (head dim 8)", attention.attention_fwd, dict(ALIGNED=False), "bf16"),
    (
        "head dims 80/96 in 128-wide tiles",
        attention.attention_fwd,
        dict(BLOCK_D=128, BLOCK_DV=128, EVEN_D=False),
        "bf16",
    ),
    ("float32, IEEE products", attention.attention_fwd, dict(PRECISION="ieee", BLOCK_M=64, BLOCK_N=32), "fp32"),
    (
        "decode, packed GQA",
        attention.attention_fwd,
        dict(PACK_GQA=True, CAUSAL=2, HAS_KV_LENS=True, BLOCK_M=16, BLOCK_N=128, BLOCK_D=128, BLOCK_DV=128),
        "bf16",
    ),
    (
        "TMA",
        attention_tma.attention_fwd_tma,
        dict(HEAD_DIM=128, HEAD_DIM_V=128, BLOCK_M=128, BLOCK_N=64, CAUSAL=1),
        "bf16",
    ),
    ("merge", merge.merge_partials, dict(BLOCK_M=64, BLOCK_DV=128), "fp32"),
    (
        "block-sparse",
        block_sparse.block_sparse_fwd,
        dict(
            BLOCK_D=64, BLOCK_DV=64, EVEN_D=True, BLOCK_M=64, BLOCK_N=64, PER_HEAD=True, PRECISION="tf32", ALIGNED=True
        ),
        "bf16",
    ),
    ("backward: D = rowsum(out * dout)", backward.row_dot, dict(BLOCK_M=64, BLOCK_DV=128, HAS_Q_LENS=True), "bf16"),
    *backward_variants("causal bf16, D = 64", dict(CAUSAL=2), 64, 64, "bf16"),
    *backward_variants("bf16, D = 128", {}, 128, 128, "bf16"),
    *backward_variants("every option, D = 64", EVERY_OPTION, 64, 64, "fp16"),
    *backward_variants("float32 IEEE, head dims 80/96", dict(PRECISION="ieee", EVEN_D=False), 80, 96, "fp32"),
    *backward_variants("head dim 256", {}, 256, 256, "bf16"),
    *backward_variants("float32 IEEE, head dim 256", dict(PRECISION="ieee"), 256, 256, "fp32"),
]
FLOATS = {"scale", "softcap"}
INDEX_TABLES = {"Q_LENS", "KV_LENS", "COUNTS", "INDICES"}
#: float32 pointers whatever the element type: LSEs, partials, the backward's row sums and bias gradient.
FLOAT32_POINTERS = {"LSE", "LSES", "OUTS", "DELTA", "DBIAS"}


KERNEL_DEFAULTS = {attention.attention_fwd: GENERAL, backward.dkdv_bwd: BACKWARD, backward.dq_bwd: BACKWARD}


def signature(kernel, constants: dict, element: str) -> dict:
    """Types for every parameter: upper-case names are pointers (int32 tables, float32 LSE)."""
    types = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constants:
            types[name] = "constexpr"
        elif name in INDEX_TABLES:
            types[name] = "*i32"
        elif name in FLOAT32_POINTERS or (name == "O" and kernel is merge.merge_partials):
            types[name] = "*fp32"
        elif name == "MASK":
            types[name] = "*i1"
        elif name.isupper():
            types[name] = f"*{element}"
        else:
            types[name] = "fp32" if name in FLOATS else "i32"
    return types


def compile_variant(kernel, constants: dict, element: str, arch: int):
    """``kernel`` compiled for ``sm_{arch}`` with the GPU launcher's specialisation of its arguments."""
    names = list(inspect.signature(kernel.fn).parameters)
    constants = {**constants, **{k: v for k, v in UNIT_STRIDES.items() if k in names}}
    options = {k: constants.pop(k) for k in ("num_warps", "num_stages") if k in constants}  # launch options
    types = signature(kernel, constants, element)
    sixteens = [i for i, n in enumerate(names) if types[n].startswith("*") or n in SIXTEENS]
    source = ASTSource(kernel, types, constants, attrs={(i,): [["tt.divisibility", 16]] for i in sixteens})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def vector_loads(compiled) -> bool:
    return bool(re.search(r"cp\.async\.cg\.shared\.global|ld\.global\.v4|cp\.async\.bulk", compiled.asm["ptx"]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args()
    failed = 0
    for name, kernel, overrides, element in VARIANTS:
        defaults = KERNEL_DEFAULTS.get(kernel, {})
        constants = {**defaults, **overrides}
        start = time.perf_counter()
        try:
            compiled = compile_variant(kernel, constants, element, args.arch)
            vectors = vector_loads(compiled)
            if constants.get("ALIGNED") and element != "fp32" and not vectors:
                raise AssertionError("strides declared aligned, yet no 16-byte vector loads in the PTX")
            print(
                f"ok      {name}: sm_{args.arch}, {compiled.metadata.shared} B shared, "
                f"{'16-byte vector loads' if vectors else 'scalar loads'}, {time.perf_counter() - start:.1f} s",
                flush=True,
            )
        except Exception as exc:  # every variant is tried; each failure printed in full
            failed += 1
            print(f"FAILED  {name}: {type(exc).__name__}: {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
