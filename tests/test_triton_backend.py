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
from attnspec.conformance.grad_bounds import gradient_bounds  # noqa: E402
from attnspec.conformance.tolerance import sdpa_bounds  # noqa: E402
from attnspec.contract import BackendError  # noqa: E402
from attnspec.reference.sdpa_grad import GRADIENTS  # noqa: E402
from attnspec.registry import load_backend  # noqa: E402
from tests.conftest import ROOT, run_suite  # noqa: E402
from tests.source_mutants import mutated_package  # noqa: E402
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
    from attnspec.backends._triton_mode import select_mode

    with pytest.raises(BackendError, match="unset TRITON_INTERPRET"):
        select_mode(interpret=False, who="triton")


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


# --- the backward pass (backward.py): pinned shapes against the float64 reference, judged by the suite's bounds


def gradients(backend, q, k, v, dout, **options):
    native = {name: backend.to_native(x) if isinstance(x, np.ndarray) else x for name, x in options.items()}
    grads = backend.sdpa_backward(*(backend.to_native(x) for x in (q, k, v, dout)), **native)
    return [backend.to_numpy(g) for g in grads]


def check_gradients(backend, shape, dtype="float32", *, nan_past_lengths=False, **options):
    """Every gradient within the tolerance policy of the reference's (as the suite judges it)."""
    b, h_q, h_kv, n_q, n_k, d = shape
    q, k, v = (rounded(x, dtype) for x in inputs(*shape))
    dout = rounded(np.random.default_rng(1).standard_normal((b, h_q, n_q, d)), dtype)
    refs = reference.sdpa_grad.sdpa_backward(q, k, v, dout, **options)
    bounds = gradient_bounds(q, k, v, dout, options, dtype, refs)
    if nan_past_lengths:  # what lies past the lengths is never read
        q, k, v, dout = (x.copy() for x in (q, k, v, dout))
        for i, (n, m) in enumerate(zip(options["q_lens"], options["kv_lens"], strict=True)):
            q[i, :, n:], dout[i, :, n:], k[i, :, m:], v[i, :, m:] = np.nan, np.nan, np.nan, np.nan
    got = gradients(backend, q, k, v, dout, **options)
    check = Checker(
        clause="sdpa.grad", backend=backend.name, device="cpu", dtype=dtype, reproduce="tests/test_triton_backend.py"
    )
    assert len(got) == len(refs)
    for name, grad, ref, bound in zip(GRADIENTS, got, refs, bounds, strict=False):
        assert grad.shape == ref.shape, name
        check.close(grad, ref, bound, what=name, case=f"{shape}, {sorted(options)}")
    return got


BACKWARD_CASES = {
    "gqa-causal-bottom-right-6q-2kv-40x70": ((2, 6, 2, 40, 70, 16), dict(causal="bottom_right")),
    "causal-top-left-nq70-nk40-d32": ((1, 3, 1, 70, 40, 32), dict(causal="top_left")),
    "window-right-edge-130": ((1, 1, 1, 130, 130, 16), dict(window=(65, 40))),
    "window-left-causal-130": ((1, 2, 2, 130, 100, 8), dict(window=(5, 0), causal="bottom_right")),
    "softcap-alibi-scale-mask": (
        (2, 2, 1, 40, 50, 16),
        dict(softcap=0.7, scale=0.9, alibi_slopes=np.array([0.5, 0.25]), mask=np.tri(40, 50, 5, dtype=bool)),
    ),
}


@pytest.mark.parametrize("case", list(BACKWARD_CASES.values()), ids=list(BACKWARD_CASES))
def test_backward_tiles_match_the_reference(backend, case):
    shape, options = case
    check_gradients(backend, shape, **options)


@pytest.mark.parametrize("bias_shape", [(50,), (1, 2, 1, 50), (2, 1, 40, 50), (2, 2, 40, 50)])
def test_bias_gradient_sums_the_broadcast_axes(backend, bias_shape):
    """dbias in the bias's shape: each tile's dS written once, summed here over batch, heads or rows."""
    bias = np.random.default_rng(3).standard_normal(bias_shape).astype(np.float32)
    bias[..., 7] = -np.inf  # a key hidden by the bias alone: dbias 0 there
    dbias = check_gradients(backend, (2, 2, 2, 40, 50, 16), bias=bias, causal="top_left")[3]
    assert dbias.shape == bias_shape and (dbias[..., 7] == 0).all()


def test_backward_never_reads_past_the_lengths(backend):
    """NaN past q_lens (q, dout) and kv_lens (k, v): every gradient finite, exactly 0 there; a batch
    item without keys gets dq = 0."""
    lens = dict(q_lens=np.array([40, 7]), kv_lens=np.array([0, 38]))
    dq, dk, dv = check_gradients(backend, (2, 2, 1, 40, 70, 16), nan_past_lengths=True, causal="bottom_right", **lens)
    assert all(np.isfinite(g).all() for g in (dq, dk, dv))
    assert (dq[0] == 0).all() and (dq[1, :, 7:] == 0).all() and (dk[0] == 0).all() and (dv[1, :, 38:] == 0).all()


@pytest.mark.parametrize("causal", [None, "bottom_right"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_backward_within_the_tolerance_policy(backend, dtype, causal):
    """P and dS rounded to the input dtype before their products, float32 accumulation."""
    check_gradients(backend, (1, 4, 2, 33, 65, 24), dtype, causal=causal)


#: Mutations of backward.py (file, text, replacement) that the pinned cases above must catch.
BACKWARD_MUTATIONS = {
    "dq_diagonal_dropped": ("start, stop = full_hi, hi  # masked: the causal", "start, stop = hi, hi  # the causal"),
    "lse_base2_in_backward": ("return lse * LOG2E, tl.load", "return lse, tl.load"),
    "gqa_first_head_only": ("for r in range(0, group):", "for r in range(0, 1):"),
    "dkdv_window_far_edge_dropped": (
        "start, stop = full_hi, hi  # masked: the window's far edge",
        "start, stop = full_hi, full_hi  # masked: the window's far edge",
    ),
}


@pytest.mark.parametrize("name", sorted(BACKWARD_MUTATIONS))
def test_pinned_backward_cases_catch_mutants(name):
    """A copy of the package with one change to the backward kernels fails one of the pinned cases."""
    import attnspec.backends.triton as original

    package = mutated_package(original, name, "backward.py", *BACKWARD_MUTATIONS[name])
    mutant = package.TritonBackend(device="cpu")
    assert any(_fails(mutant, shape, options) for shape, options in BACKWARD_CASES.values()), name


def _fails(backend, shape, options) -> bool:
    try:
        check_gradients(backend, shape, **options)
    except AssertionError:
        return True
    return False
