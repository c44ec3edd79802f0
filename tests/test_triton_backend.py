"""The Triton backend on the CPU, through Triton's interpreter: the kernels' edge cases and mutants.

The conformance suite judges the backend (``pytest conformance --backend=triton --device=cpu``);
these tests pin the cases a tiled kernel gets wrong first, each against the float64 reference
at named shapes (test ids state them), and prove that the suite catches mutants of the kernel.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("the triton backend needs triton and torch", allow_module_level=True)

from attnspec import reference  # noqa: E402
from attnspec.conformance.assertions import Checker  # noqa: E402
from attnspec.conformance.dtypes import rounded  # noqa: E402
from attnspec.conformance.tolerance import sdpa_bounds  # noqa: E402
from attnspec.contract import BackendError  # noqa: E402
from attnspec.registry import load_backend  # noqa: E402
from tests.conftest import ROOT, run_suite  # noqa: E402
from tests.triton_mutants import MUTATIONS  # noqa: E402

#: one xdist worker runs this file (its module fixture is costly): ``--dist loadgroup``
pytestmark = pytest.mark.xdist_group("triton_backend")


@pytest.fixture(scope="module")
def backend():
    return load_backend("triton", device="cpu")


def attend(backend, q, k, v, **options):
    native = {name: backend.to_native(x) if isinstance(x, np.ndarray) else x for name, x in options.items()}
    out, lse = backend.sdpa(backend.to_native(q), backend.to_native(k), backend.to_native(v), return_lse=True, **native)
    return backend.to_numpy(out), backend.to_numpy(lse)


def inputs(b, h_q, h_kv, n_q, n_k, d, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((b, h_q, n_q, d)).astype(np.float32),
        rng.standard_normal((b, h_kv, n_k, d)).astype(np.float32),
        rng.standard_normal((b, h_kv, n_k, d)).astype(np.float32),
    )


def assert_matches(got, want):
    out, lse = got
    ref_out, ref_lse = want
    np.testing.assert_allclose(out, ref_out, atol=2e-6, rtol=0)
    assert (np.isneginf(lse) == np.isneginf(ref_lse)).all()
    np.testing.assert_allclose(
        np.where(np.isneginf(ref_lse), 0, lse), np.where(np.isneginf(ref_lse), 0, ref_lse), atol=2e-6, rtol=0
    )


# (B, H_q, H_kv, N_q, N_k, D) at the interpreter's 32 x 32 tiles
SHAPES = {
    "one-tile-32x32-d16": (1, 1, 1, 32, 32, 16),
    "partial-last-tiles-33x65-d24": (1, 2, 2, 33, 65, 24),
    "gqa-6q-2kv-n40-d8": (2, 6, 2, 40, 40, 8),
    "mqa-3q-1kv-nq5-nk70-d32": (1, 3, 1, 5, 70, 32),
}


@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_tiles_match_the_reference(backend, shape, causal):
    q, k, v = inputs(*shape)
    assert_matches(attend(backend, q, k, v, causal=causal), reference.sdpa(q, k, v, causal=causal, return_lse=True))


@pytest.mark.parametrize("causal", [None, "bottom_right"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_tiles_within_the_tolerance_policy(backend, dtype, causal):
    """The 16-bit paths (bfloat16 products emulated in the interpreter, float16 on the tensor-core dot),
    which CI's suite run (float32 only, for time) leaves to this test; the bounds are the suite's."""
    shape = "partial-last-tiles-33x65-d24"
    q, k, v = (rounded(x, dtype) for x in inputs(*SHAPES[shape]))
    ref_out, ref_lse = reference.sdpa(q, k, v, causal=causal, return_lse=True)
    out_bound, lse_bound = sdpa_bounds(q, k, v, {"causal": causal}, dtype, ref_out, ref_lse)
    out, lse = attend(backend, q, k, v, causal=causal)
    check = Checker(
        clause="sdpa", backend=backend.name, device="cpu", dtype=dtype, reproduce="tests/test_triton_backend.py"
    )
    check.close(out, ref_out, out_bound, what="out", case=f"{shape}, causal={causal}")
    check.close(lse, ref_lse, lse_bound, what="lse", case=f"{shape}, causal={causal}")


def test_rows_without_keys_are_zero_with_lse_minus_inf(backend):
    """kv_lens 0 in one batch item, q_lens cutting the other; NaN stored past both lengths is never read."""
    q, k, v = inputs(2, 2, 1, 40, 70, 16)
    q_lens, kv_lens = np.array([40, 7]), np.array([0, 38])
    q[1, :, 7:], k[1, :, 38:], v[1, :, 38:] = np.nan, np.nan, np.nan
    out, lse = attend(backend, q, k, v, q_lens=q_lens, kv_lens=kv_lens)
    assert (out[0] == 0).all() and np.isneginf(lse[0]).all()
    assert (out[1, :, 7:] == 0).all() and np.isneginf(lse[1, :, 7:]).all()
    ref = reference.sdpa(q, k, v, q_lens=q_lens, kv_lens=kv_lens, return_lse=True)
    assert_matches((out, lse), ref)


def test_n_k_zero(backend):
    q, k, v = inputs(1, 2, 2, 5, 0, 8)
    out, lse = attend(backend, q, k, v)
    assert out.shape == (1, 2, 5, 8) and (out == 0).all() and np.isneginf(lse).all()


def test_window_skips_and_masks_blocks(backend):
    q, k, v = inputs(1, 1, 1, 130, 130, 16)
    for window in [(5, 0), (0, 33), (65, 40)]:
        assert_matches(attend(backend, q, k, v, window=window), reference.sdpa(q, k, v, window=window, return_lse=True))


def test_decode_packs_query_heads_and_reads_lengths(backend):
    """Four query heads per KV head share a tile; splits end past the shorter cache."""
    q, k, v = inputs(2, 8, 2, 1, 100, 16)
    lens = np.array([100, 9])
    out, lse = backend.decode(
        *(backend.to_native(x) for x in (q, k, v)), cache_lens=backend.to_native(lens), num_splits=3
    )
    ref = reference.sdpa(q, k, v, causal="bottom_right", kv_lens=lens, return_lse=True)
    assert_matches((backend.to_numpy(out), backend.to_numpy(lse)), ref)


def test_decode_checks_host_lengths(backend):
    q, k, v = (backend.to_native(x) for x in inputs(1, 1, 1, 1, 8, 16))
    with pytest.raises(ValueError, match="cache_lens must be <= 8"):
        backend.decode(q, k, v, cache_lens=np.array([9]))


def test_flash_forward_maps_block_sizes_to_tiles():
    from attnspec.backends import kernel_tile as _tile

    assert [_tile(b) for b in (1, 16, 17, 64, 65, 128, 500)] == [16, 16, 32, 64, 128, 128, 128]


def test_one_mode_per_process(backend):
    """Triton was imported for the interpreter: the GPU cannot be had in the same process."""
    from attnspec.backends.triton import _select_mode

    with pytest.raises(BackendError, match="unset TRITON_INTERPRET"):
        _select_mode(interpret=False)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_suite_catches_kernel_mutants(tmp_path, name):
    clause = MUTATIONS[name][3]
    code, report, output = run_suite(
        tmp_path,
        f"--backend={ROOT / 'tests' / 'triton_mutants.py'}:{name}",
        "--device=cpu",
        "--dtype=float32",
        f"--clauses={clause}",
        name=name,
        profile="mutants",
    )
    assert code == 1, output[-3000:]
    assert report["clauses"][clause]["status"] == "failed", report["clauses"][clause]
