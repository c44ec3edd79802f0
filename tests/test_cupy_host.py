"""The cupy backend's host side, which needs no GPU: tile table, instantiation names, launch
geometry, split-KV arithmetic, and the decline without CuPy. The kernels themselves are compiled
by ``scripts/cupy_compile_check.py`` (CI) and judged by the conformance suite on a GPU."""

from __future__ import annotations

import re

import pytest

from attnspec.backends.cupy import kernels

H100_SHARED_LIMIT = 227 * 1024  # opt-in dynamic shared memory per CTA on sm_90 (and sm_80: 163 KiB)
A100_SHARED_LIMIT = 163 * 1024


@pytest.mark.parametrize("d", [1, 8, 15, 16, 17, 64, 72, 80, 96, 112, 128, 129, 192, 256])
def test_head_dim_pads_to_a_multiple_of_16_holding_both_dims(d):
    hd = kernels.padded_head_dim(d, 1)
    assert hd % 16 == 0 and d <= hd < d + 16 and hd >= 16
    assert kernels.padded_head_dim(1, d) == hd


def test_head_dims_past_256_are_refused_by_name():
    with pytest.raises(ValueError, match="head dim 257 > 256"):
        kernels.attention("bfloat16", 257, 64, rows=64, general=False, partial=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("d", [16, 64, 80, 128, 144, 256])
@pytest.mark.parametrize("block", [None, (16, 16), (128, 64), (32, 32)])
def test_16_bit_tiles_fit_shared_memory_and_whole_mma_shapes(dtype, d, block):
    for rows in (1, 1000, 100_000):
        inst = kernels.attention(dtype, d, d, rows=rows, general=True, partial=False, block=block)
        assert inst.block_m % 16 == 0 and inst.block_n % 16 == 0
        hd = inst.args[1]
        assert inst.threads == inst.block_m * 2 // kernels.warp_tiles(inst.block_m, hd)  # a warp per 16 or 32 rows
        assert inst.shared_bytes <= A100_SHARED_LIMIT, inst
        assert inst.shared_bytes == (inst.block_m + 4 * inst.block_n) * (hd + 8) * 2


def test_float32_tiles_fit_static_shared_memory():
    for d in (1, 64, 128, 129, 256):
        inst = kernels.attention("float32", d, d, rows=10, general=False, partial=False)
        hd, bn = inst.args[0], inst.args[1]
        assert 2 * bn * hd * 4 <= 48 * 1024 and inst.threads == 128 and inst.block_m == 32


def test_instance_names_are_the_cxx_template_expressions():
    inst = kernels.attention("bfloat16", 80, 64, rows=4096, general=True, partial=True)
    assert inst.name == "attention_fwd<__nv_bfloat16, 80, 128, 64, 2, true, float>"
    assert kernels.merge("float32", "float16").name == "merge_partials<float, __half>"
    assert kernels.attention("float32", 64, 64, rows=9, general=False, partial=False).name == (
        "attention_fwd_f32<64, 32, false, float>"
    )


def test_every_instantiated_template_exists_in_its_source():
    for inst in (
        kernels.attention("float16", 64, 64, rows=9, general=False, partial=False),
        kernels.attention("float32", 64, 64, rows=9, general=False, partial=False),
        kernels.merge("bfloat16", "bfloat16"),
    ):
        code, options = kernels.program(inst)
        assert re.search(
            rf"^template <[^>]*>\n__global__ void.*\n{inst.kernel}\(|__global__ void {inst.kernel}\(", code, re.M
        ), inst
        assert f"-I{kernels.CSRC}" in options


@pytest.mark.parametrize("n_k", [0, 1, 63, 64, 65, 1000, 4096])
@pytest.mark.parametrize("num_splits", [1, 2, 3, 7, 64, 10_000])
def test_splits_are_whole_tiles_covering_the_keys_and_none_is_empty(n_k, num_splits):
    split_len, splits = kernels.split_length(n_k, num_splits, 64)
    assert split_len % 64 == 0 and 1 <= splits <= num_splits
    assert split_len * splits >= n_k and split_len * (splits - 1) < max(n_k, 1)


def test_grid_covers_rows_with_one_cta_per_tile():
    inst = kernels.attention("bfloat16", 128, 128, rows=4000, general=False, partial=False)
    assert kernels.grid(inst, 4000, 12, 3) == (-(-4000 // inst.block_m), 12, 3)


def test_backend_declines_without_cupy(monkeypatch):
    import attnspec.backends.cupy as backend
    from attnspec.contract import BackendError

    monkeypatch.setattr(backend, "cp", None)
    with pytest.raises(BackendError, match=r"pip install 'attnspec\[cupy\]'"):
        backend.CupyBackend()


def test_every_cuda_mutation_applies_to_the_source_exactly_once():
    from tests.cupy_mutants import MUTATIONS

    for name, (file, old, _new, clause) in MUTATIONS.items():
        assert (kernels.CSRC.parent / file).read_text().count(old) == 1, name
        assert clause.split(".")[0] in ("sdpa", "flash"), name
