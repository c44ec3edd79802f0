"""The torch backend's own parts: compiled steps equal eager ones, tile planning, variants."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from attnspec import load_backend  # noqa: E402
from attnspec.backends.torch_tiled import kernel  # noqa: E402
from attnspec.backends.torch_tiled.steps import Steps, tile_softmax  # noqa: E402
from attnspec.contract import BackendError  # noqa: E402

#: one xdist worker runs this file (its module fixture is costly): ``--dist loadgroup``
pytestmark = pytest.mark.xdist_group("torch_backend")


@pytest.fixture(scope="module")
def compiled():
    return Steps(compiled=True)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1, 1), (2, 1, 3, 5, 7), (1, 2, 1, 64, 64), (2, 3, 2, 0, 4)], ids=lambda s: "x".join(map(str, s))
)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_compiled_tile_softmax_equals_eager(compiled, shape, masked):
    gen = torch.Generator().manual_seed(sum(shape))
    s = torch.randn(shape, generator=gen) * 4
    visible = None
    if masked:  # broadcast over heads, as the kernel passes it; some rows see nothing
        visible = torch.rand(shape[0], 1, 1, *shape[3:], generator=gen) > 0.5
    got = compiled.tile_softmax(s, 0.37, visible, torch.bfloat16)
    want = tile_softmax(s, 0.37, visible, torch.bfloat16)
    for g, w, name in zip(got, want, ("e", "top", "row_sum"), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        torch.testing.assert_close(g.float(), w.float(), rtol=1e-6, atol=1e-6, equal_nan=True, msg=name)


def test_tile_softmax_rows_without_a_finite_score():
    """A row whose scores are all -inf (a -inf bias, no mask) weighs nothing: e = 0, top = -inf,
    row sum 0; its neighbour is an ordinary softmax. (-inf - -inf is NaN inside: fixed up.)"""
    s = torch.tensor([[-math.inf, -math.inf, -math.inf], [0.0, 1.0, -math.inf]])
    e, top, row_sum = tile_softmax(s, 1.0, None, torch.float32)
    assert e[0].eq(0).all() and top[0] == -math.inf and row_sum[0] == 0
    torch.testing.assert_close(e[1], torch.tensor([math.exp(-1), 1.0, 0.0]))
    assert top[1] == 1.0 and row_sum[1] == pytest.approx(1 + math.exp(-1))


def test_compiled_combine_writes_only_its_rows(compiled):
    """The running state is updated in place through row-slice views, as ``_update`` passes it."""
    gen = torch.Generator().manual_seed(0)
    b, h, g, n, d, r0, r1 = 2, 2, 3, 9, 4, 2, 6
    start = (
        torch.randn(b, h, g, n, d, generator=gen),
        torch.randn(b, h, g, n, generator=gen) * 3,
        torch.rand(b, h, g, n, generator=gen) + 0.5,
    )  # a running state that earlier tiles left
    start[1][0, 0, 0, r0 + 1] = -math.inf  # a row that has seen no key yet
    start[0][0, 0, 0, r0 + 1], start[2][0, 0, 0, r0 + 1] = 0.0, 0.0
    states = [tuple(x.clone() for x in start) for _ in range(2)]
    weighted = torch.randn(b, h, g, r1 - r0, d, generator=gen)
    top = torch.randn(b, h, g, r1 - r0, generator=gen)
    top[0, 0, 0, 0] = -math.inf  # a row with no visible key in this tile
    row_sum = torch.rand(b, h, g, r1 - r0, generator=gen)
    for steps, (acc, m, total) in zip((compiled, Steps(compiled=False)), states, strict=True):
        steps.combine(acc[..., r0:r1, :], m[..., r0:r1], total[..., r0:r1], weighted, top, row_sum)
    for got, want in zip(*states, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for got, before in zip(states[0], start, strict=True):
        rows = (slice(None),) * 3  # (B, H_kv, G, rows, ...)
        assert torch.equal(got[rows + (slice(0, r0),)], before[rows + (slice(0, r0),)]), "rows before the slice changed"
        assert torch.equal(got[rows + (slice(r1, None),)], before[rows + (slice(r1, None),)]), "rows after it changed"
        assert not torch.equal(got[rows + (slice(r0, r1),)], before[rows + (slice(r0, r1),)]), (
            "the slice was not written"
        )


def test_unmasked_tiles_need_no_mask():
    """Regression: every tile was once masked, because the shortest length was taken as min(lens, 0)."""
    q = k = v = torch.zeros(2, 2, 64, 8)
    assert kernel.tile_fully_visible(kernel.prepare(q, k, v), 0, 64, 0, 32)
    padded = kernel.prepare(q, k, v, kv_lens=torch.tensor([64, 40]))
    assert kernel.tile_fully_visible(padded, 0, 64, 0, 40) and not kernel.tile_fully_visible(padded, 0, 64, 0, 41)


@pytest.mark.parametrize(
    "causal, lens, want",
    [
        (None, None, [(0, 64)]),
        ("top_left", None, [(0, 31), (31, 64)]),  # rows >= 31 see keys 0..31 entirely
        ("bottom_right", (64, 48), [(0, 47), (47, 64)]),  # item 1 has 48 keys: offset -16, rows >= 31 + 16
    ],
)
def test_row_blocks_split_off_the_diagonal(causal, lens, want):
    q = k = v = torch.zeros(2, 1, 64, 8)
    p = kernel.prepare(q, k, v, causal=causal, kv_lens=None if lens is None else torch.tensor(lens))
    assert kernel._row_blocks(p, 0, 64, 32, None) == want
    assert kernel._row_blocks(p, 0, 64, 32, 16) == [(0, 16), (16, 32), (32, 48), (48, 64)]


@pytest.mark.parametrize("spec", ["torch:fast", "flex:static"])
def test_unknown_variants_are_named(spec):
    with pytest.raises(BackendError, match="variant"):
        load_backend(spec, device="cpu")


def test_variants_pick_the_steps():
    assert load_backend("torch:compiled", device="cpu").steps.compiled
    eager = load_backend("torch:eager", device="cpu")
    assert not eager.steps.compiled and eager.name == "torch:eager"
    assert load_backend("torch", device="cpu").name == "torch"  # the CPU default: eager


@pytest.mark.parametrize(
    "call", ["causal_padded_gqa", "flash_blocks", "decode_split", "decode_padded_split", "decode_one_split"]
)
def test_compiled_backend_equals_eager(call):
    """The compiled steps through the whole kernel: views written in place, masks, splits."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, n, 8, generator=gen) for h, n in ((4, 37), (2, 37), (2, 37)))
    lens = torch.tensor([37, 21])
    calls = {
        "causal_padded_gqa": lambda be: be.sdpa(
            q, k, v, causal="bottom_right", q_lens=lens, kv_lens=lens, return_lse=True
        ),
        "flash_blocks": lambda be: be.flash_forward(q, k, v, block_q=5, block_k=7, causal="top_left"),
        "decode_split": lambda be: be.decode(
            q[:, :, :1], k[:, :, :36], v[:, :, :36], cache_lens=torch.tensor([36, 36]), num_splits=4
        ),
        "decode_padded_split": lambda be: be.decode(q[:, :, :2], k, v, cache_lens=lens, num_splits=3),
        "decode_one_split": lambda be: be.decode(q[:, :, :1], k, v, cache_lens=lens, num_splits=1),
    }
    eager, compiled = (calls[call](load_backend(f"torch:{x}", device="cpu")) for x in ("eager", "compiled"))
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("shape", [(1, 1, 0, 4), (0, 1, 1, 4)], ids=["no_query", "no_batch"])
def test_split_kv_of_nothing(shape):
    """Regression: the split-layout reshapes once inferred a size from 0 elements."""
    be = load_backend("torch", device="cpu")
    q, kv = torch.zeros(shape), torch.zeros(shape[0], 1, 3, 4)
    out, lse = be.split_kv(q, kv, kv, num_splits=1)
    assert out.shape == shape and lse.shape == shape[:3]
