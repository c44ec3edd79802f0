"""Compile every CUDA kernel instantiation the ``cupy`` backend launches, with NVRTC, no GPU needed.

Usage: ``python scripts/cupy_compile_check.py [--arch sm_80 sm_90a] [--verbose]``. Needs the pip
wheels ``nvidia-cuda-nvrtc`` (the compiler), ``nvidia-cuda-runtime`` (``cuda_bf16.h``) and
``cuda-bindings`` (NVRTC's Python API): ``pip install attnspec[cupy-compile]``. The sources, options
and template names come from :mod:`attnspec.backends.cupy.kernels`, as the backend takes them, so
a kernel that stops compiling fails here. What this cannot check: that the kernels run correctly
(the conformance suite on a GPU does) and CuPy's own launch path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from attnspec.backends.cupy import kernels


def instances() -> list[kernels.Instance]:
    """One of each kernel and code path the backend can choose: both tile regimes of the 16-bit
    kernel (head dim <= 128 with Q in registers, above it from shared memory) and its 64- and
    128-row tiles, the plain and general score paths, final and partial (float32) outputs; the
    float32 kernel's two key tiles; every merge. (Other head dims differ only in constants.)"""
    out = []
    for dtype, d, rows in [(t, d, 4096) for t in ("bfloat16", "float16") for d in (64, 128, 256)] + [
        ("bfloat16", 80, 64),
        ("float32", 64, 64),
        ("float32", 256, 64),
    ]:
        for general in (False, True):
            for partial in (False, True):
                out.append(kernels.attention(dtype, d, d, rows=rows, general=general, partial=partial))
    for src in ("bfloat16", "float16", "float32"):
        for dst in dict.fromkeys((src, "float32")):
            out.append(kernels.merge(src, dst))
    return out


def compile_one(inst: kernels.Instance, arch: str) -> tuple[int, str]:
    """``(cubin bytes, log)``; raises RuntimeError with NVRTC's log if the compile fails."""
    from cuda.bindings import nvrtc

    code, options = kernels.program(inst)

    def check(result, what):
        err = result[0]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"{what}: {err}")
        return result[1:]

    (prog,) = check(nvrtc.nvrtcCreateProgram(code.encode(), inst.source.encode(), 0, [], []), "create")
    check(nvrtc.nvrtcAddNameExpression(prog, inst.name.encode()), "name expression")
    opts = [o.encode() for o in (*options, f"-arch={arch}")]
    err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
    (size,) = check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
    log = b" " * size
    check(nvrtc.nvrtcGetProgramLog(prog, log), "log")
    text = log.decode(errors="replace").strip("\x00 \n")
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{inst.name} for {arch} does not compile:\n{text}")
    check(nvrtc.nvrtcGetLoweredName(prog, inst.name.encode()), "lowered name")
    (cubin_size,) = check(nvrtc.nvrtcGetCUBINSize(prog), "cubin size")
    nvrtc.nvrtcDestroyProgram(prog)
    return cubin_size, text


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", nargs="+", default=["sm_80", "sm_90a"])
    parser.add_argument("--verbose", action="store_true", help="print NVRTC's log of every compile")
    args = parser.parse_args()
    start = time.monotonic()
    jobs = [(inst, arch) for arch in args.arch for inst in instances()]
    with ProcessPoolExecutor(os.cpu_count()) as pool:  # ptxas is single-threaded
        results = list(pool.map(_try_compile, jobs))
    failed = 0
    for (inst, arch), (size, log) in zip(jobs, results, strict=True):
        if size is None:
            failed += 1
            print(f"FAILED {log}", file=sys.stderr)
            continue
        print(f"ok {arch} {inst.name}: {size} bytes")
        if args.verbose and log:
            print(log)
    print(f"{len(jobs) - failed} compiled, {failed} failed, {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


def _try_compile(job: tuple[kernels.Instance, str]) -> tuple[int | None, str]:
    try:
        return compile_one(*job)
    except RuntimeError as exc:
        return None, str(exc)


if __name__ == "__main__":
    sys.exit(main())
