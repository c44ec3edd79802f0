"""The torch-side visibility layer against the reference's masks and score modifiers, on the CPU.

One layer (``backends/_torch_visibility.py``) serves the tiled kernel (on tiles), the ``torch-sdpa``
adapter (on the full grid) and ``flex`` (traced). Flex needs CUDA to run the suite, so its
``mask_mod`` and ``score_mod`` are called here directly on index tensors, as Flex would call them.
The reference (``reference/masks.py``, through ``reference.sdpa``) shares no code with the layer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from attnspec.backends import _torch_visibility as vis  # noqa: E402
from attnspec.backends import flex, torch_sdpa  # noqa: E402
from attnspec.backends.torch_tiled import kernel  # noqa: E402
from attnspec.reference import masks as reference_masks  # noqa: E402
from attnspec.reference.sdpa import prepare, scores, visible  # noqa: E402

VISIBILITY = ("causal", "window", "mask", "q_lens", "kv_lens")


@st.composite
def cases(draw, modifiers: bool = False):
    """``(q, k, v, options)`` as float64 tensors: every visibility rule, N_q and N_k apart, lengths 0 to N."""
    h_kv, group, b = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3])), draw(st.integers(1, 3))
    n_q, n_k = draw(st.integers(0, 11)), draw(st.integers(0, 11))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    h_q = h_kv * group
    q, k, v = (
        torch.randn(b, h, n, 3, generator=gen, dtype=torch.float64) for h, n in ((h_q, n_q), (h_kv, n_k), (h_kv, n_k))
    )
    options = {"causal": draw(st.sampled_from([None, "top_left", "bottom_right"]))}
    if draw(st.booleans()):
        options["window"] = (draw(st.integers(-1, 4)), draw(st.integers(-1, 4)))
    if draw(st.booleans()):
        shape = draw(st.sampled_from([(b, h_q, n_q, n_k), (b, 1, 1, n_k), (1, h_q, n_q, n_k)]))
        options["mask"] = torch.rand(shape, generator=gen) < 0.7
    if draw(st.booleans()):
        options["q_lens"] = torch.randint(0, n_q + 1, (b,), generator=gen)
        options["kv_lens"] = torch.randint(0, n_k + 1, (b,), generator=gen)
    if modifiers:
        if draw(st.booleans()):
            options["softcap"] = draw(st.sampled_from([0.5, 4.0]))
        if draw(st.booleans()):
            options["bias"] = torch.randn(
                draw(st.sampled_from([(b, h_q, n_q, n_k), (1, h_q, 1, n_k)])), generator=gen, dtype=torch.float64
            )
        if draw(st.booleans()):
            options["alibi_slopes"] = torch.rand(
                draw(st.sampled_from([(h_q,), (b, h_q)])), generator=gen, dtype=torch.float64
            )
    return q, k, v, options


def reference_problem(q, k, v, options):
    return prepare(
        *(x.numpy() for x in (q, k, v)), **{name: x.numpy() if torch.is_tensor(x) else x for name, x in options.items()}
    )


def reference_grid(q, k, v, options) -> np.ndarray:
    """The reference's visibility ``(B, H_q, N_q, N_k)``."""
    (b, h_q, n_q, _), n_k = q.shape, k.shape[2]
    problem = reference_problem(q, k, v, options)
    return np.broadcast_to(visible(problem, range(n_q), range(n_k)), (b, h_q, n_q, n_k))


def visibility_options(options) -> dict:
    return {name: x for name, x in options.items() if name in VISIBILITY}


def dense_mask(q, k, **options):
    """The ``torch-sdpa`` adapter's ``attn_mask`` for these options (softcap it does not take)."""
    return torch_sdpa._dense_mask(q, k, **{**dict.fromkeys(VISIBILITY + ("bias", "alibi_slopes")), **options})


def full(x: torch.Tensor, q, k) -> np.ndarray:
    return np.broadcast_to(x.numpy(), (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))


@settings(max_examples=300, deadline=None)
@given(cases())
def test_full_grid_is_the_reference_mask(case):
    """The ``torch-sdpa`` adapter's boolean ``attn_mask``: ``Rules.visible`` on the full grid."""
    q, k, v, options = case
    want = reference_grid(q, k, v, options)
    got = dense_mask(q, k, **options)
    if got is None:  # no rule at all: nothing is hidden
        assert not any(options.get(name) is not None for name in VISIBILITY) and want.all()
    else:
        np.testing.assert_array_equal(full(got, q, k), want)


@settings(max_examples=200, deadline=None)
@given(cases(), st.integers(1, 5), st.integers(1, 5))
def test_every_tile_is_the_reference_mask(case, block_q, block_k):
    """The tiled kernel's mask of each tile, in its grouped layout ``(B, H_kv, G, rows, cols)``."""
    q, k, v, options = case
    want = reference_grid(q, k, v, options)
    p = kernel.prepare(q, k, v, **options)
    b, h_kv, g, n_q, n_k, _ = p.shape
    for r0 in range(0, n_q, block_q):
        for c0 in range(0, n_k, block_k):
            r1, c1 = min(r0 + block_q, n_q), min(c0 + block_k, n_k)
            got = kernel.tile_visible(p, r0, r1, c0, c1).expand(b, h_kv, g, r1 - r0, c1 - c0)
            np.testing.assert_array_equal(got.reshape(b, h_kv * g, r1 - r0, c1 - c0).numpy(), want[:, :, r0:r1, c0:c1])


@settings(max_examples=300, deadline=None)
@given(cases(), st.integers(1, 5), st.integers(1, 5))
def test_tile_planning_skips_and_unmasks_only_what_it_may(case, block_q, block_k):
    """Rows outside ``row_range`` see nothing of the key tile; a ``fully_visible`` tile hides nothing;
    rows from ``causal_diagonal_end`` on see every key of the tile under the causal rule."""
    q, k, v, options = case
    want = reference_grid(q, k, v, options)
    rules = kernel.prepare(q, k, v, **options).rules
    n_q, n_k = want.shape[2:]
    offsets = rules.kv_lens - rules.q_lens
    causal = {
        "top_left": reference_masks.causal_top_left(),
        "bottom_right": reference_masks.causal_bottom_right(offsets),
    }.get(options["causal"])
    for c0 in range(0, n_k, block_k):
        c1 = min(c0 + block_k, n_k)
        lo, hi = vis.row_range(rules, c0, c1)
        seen = want[:, :, :, c0:c1].any(axis=(0, 1, 3))
        assert not seen[:lo].any() and not seen[max(hi, lo) :].any(), (lo, hi, np.flatnonzero(seen))
        for r0 in range(0, n_q, block_q):
            r1 = min(r0 + block_q, n_q)
            if vis.fully_visible(rules, r0, r1, c0, c1):
                assert want[:, :, r0:r1, c0:c1].all()
        end = vis.causal_diagonal_end(rules, c1)
        if causal is None:
            assert end is None
        else:  # the causal rule alone (no padding) lets every key before c1 through from row `end` on
            assert reference_masks.evaluate(causal, (len(offsets), 1), range(max(end, 0), n_q), range(c1)).all()


@settings(max_examples=300, deadline=None)
@given(cases())
def test_flex_mask_mod_is_the_reference_mask(case):
    """Flex's ``mask_mod`` called on broadcast index tensors, per item and (no lengths, no mask) shared."""
    q, k, v, options = case
    want = reference_grid(q, k, v, options)
    per_batch = any(options.get(name) is not None for name in ("mask", "q_lens", "kv_lens"))
    opts = {"window": None, "mask": None, **visibility_options(options)}
    q_lens, kv_lens = vis.lengths(q, k, options.get("q_lens"), options.get("kv_lens"))
    mask_mod = flex._mask_mod(q, k, opts["causal"], opts["window"], opts["mask"], q_lens, kv_lens, per_batch)
    grid = vis.full_grid(q.shape[0], q.shape[1], q.shape[2], k.shape[2], "cpu")
    np.testing.assert_array_equal(full(mask_mod(*grid[:4]), q, k), want)


def reference_scores(q, k, v, options) -> np.ndarray:
    """The reference's scaled, modified scores ``(B, H_q, N_q, N_k)`` (float64)."""
    problem = reference_problem(q, k, v, options)
    return scores(problem, range(q.shape[2]), range(k.shape[2]))


def scaled_dots(q, k):
    g = q.shape[1] // k.shape[1]
    return q @ k.repeat_interleave(g, dim=1).transpose(-1, -2) * q.shape[-1] ** -0.5


@settings(max_examples=200, deadline=None)
@given(cases(modifiers=True))
def test_score_modifiers_are_the_reference(case):
    """Softcap, bias and ALiBi as the kernel applies them on a tile, as Flex's ``score_mod`` and as the
    adapter's float ``attn_mask`` (which has no softcap: SDPA takes none)."""
    q, k, v, options = case
    want = reference_scores(q, k, v, options)
    grid = vis.full_grid(q.shape[0], q.shape[1], q.shape[2], k.shape[2], "cpu")
    p = kernel.prepare(q, k, v, **options)
    got, scale = kernel.tile_scores(p, 0, q.shape[2], 0, k.shape[2], scaled=True)
    np.testing.assert_allclose(got.reshape(want.shape).numpy(), want, rtol=1e-12, atol=1e-12)
    score_mod = flex._score_mod(
        q,
        k,
        options.get("softcap"),
        options.get("bias"),
        options.get("alibi_slopes"),
        options.get("q_lens"),
        options.get("kv_lens"),
    )
    if score_mod is not None:
        got = score_mod(scaled_dots(q, k).float(), *grid[:4])
        np.testing.assert_allclose(full(got, q, k), want, rtol=2e-6, atol=2e-6)
    no_cap = {name: x for name, x in options.items() if name != "softcap"}
    dense = dense_mask(q, k, **no_cap)
    if "bias" in options or "alibi_slopes" in options:
        visible = reference_grid(q, k, v, options)
        additive = reference_scores(q, k, v, no_cap) - scaled_dots(q, k).numpy()
        np.testing.assert_allclose(full(dense, q, k), np.where(visible, additive, -np.inf), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_q, n_k", [(7, 7), (5, 12), (12, 5), (1, 9), (0, 3)])
@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
@pytest.mark.parametrize("window", [None, (2, 0), (-1, 3), (4, -1), (1, 1), (-1, -1)])
def test_visible_pairs_counts_the_reference_grid(n_q, n_k, causal, window):
    """The benchmark's work count: the pairs of the reference's grid without padding."""
    rules = [reference_masks.padding(np.array([n_q]), np.array([n_k]))]
    offsets = np.array([n_k - n_q])
    if causal:
        rules.append(
            reference_masks.causal_top_left() if causal == "top_left" else reference_masks.causal_bottom_right(offsets)
        )
    if window:
        rules.append(reference_masks.sliding_window(*window, offsets))
    grid = reference_masks.evaluate(reference_masks.and_masks(*rules), (1, 1), range(n_q), range(n_k))
    assert vis.visible_pairs(n_q, n_k, causal, window) == int(np.broadcast_to(grid, (1, 1, n_q, n_k)).sum())


def test_backends_leave_the_global_compile_settings_alone():
    """Importing the torch-side backends, and (where PyTorch takes a per-function limit) constructing
    their compiled variants, leaves Dynamo's process-wide recompile limit as it was; the steps' own
    limit lets a function recompile past it."""
    script = textwrap.dedent("""
        import inspect, torch
        import torch._dynamo.config as config
        settings = lambda: {name: getattr(config, name, None) for name in ("recompile_limit", "cache_size_limit")}
        before = settings()
        import attnspec.backends.flex, attnspec.backends.torch_sdpa, attnspec.backends.torch_tiled
        assert settings() == before, "changed at import"
        if "recompile_limit" in inspect.signature(torch.compile).parameters:
            from attnspec import load_backend
            load_backend("torch:compiled", device="cpu"), load_backend("flex", device="cpu")
            assert settings() == before, "changed by constructing a backend"
            before = config.recompile_limit
            from attnspec.backends._torch_compile import compile_with_limit
            def add_one(x):
                return x + 1
            counted = compile_with_limit(add_one, before + 4, backend="eager", dynamic=False)
            for n in range(1, before + 4):
                counted(torch.zeros(n))
            frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            assert frames == before + 3, frames
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
