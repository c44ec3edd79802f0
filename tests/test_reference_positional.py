"""Tests of the positional-encoding references against values computed independently here."""

import math
from functools import partial

import numpy as np
import pytest

from attnspec.reference.absolute import learned, sinusoidal
from attnspec.reference.alibi import alibi_bias, alibi_slopes
from attnspec.reference.relative import shaw, t5_bias, t5_bucket
from attnspec.reference.rope import rope

rng = np.random.default_rng(0)
close = partial(np.testing.assert_allclose, rtol=1e-13, atol=1e-14)


def test_sinusoidal_hand_values_and_layouts():
    pe = sinusoidal([0, 1], 4)
    # w_0 = 1, w_1 = 10000 ** (-2/4) = 0.01
    np.testing.assert_array_equal(pe[0], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(pe[1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)], rtol=1e-15)
    cat = sinusoidal([0, 1], 4, layout="concat")
    np.testing.assert_array_equal(cat[0], [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(cat[1], [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)], rtol=1e-15)
    # The layouts hold the same values: concat channels (c, dim/2 + c) go to (2c, 2c + 1).
    dim, positions = 10, np.arange(7)
    perm = np.ravel(np.column_stack([np.arange(dim // 2), dim // 2 + np.arange(dim // 2)]))
    cat = sinusoidal(positions, dim, layout="concat", base=100.0)
    np.testing.assert_array_equal(cat[:, perm], sinusoidal(positions, dim, base=100.0))


def test_sinusoidal_t2t_frequencies():
    """tensor2tensor / fairseq: ``w_c = exp(-c * log(base) / (dim/2 - 1))``, transcribed from fairseq."""
    pe = sinusoidal([0, 1], 4, layout="t2t")  # w_0 = 1, w_1 = 10000 ** (-1/1) = 1e-4
    np.testing.assert_array_equal(pe[0], [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(pe[1], [math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)], rtol=1e-15)
    dim, positions, base = 10, np.arange(7), 100.0
    freqs = np.exp(np.arange(dim // 2) * -(math.log(base) / (dim // 2 - 1)))
    angles = positions[:, None] * freqs[None, :]
    close(sinusoidal(positions, dim, layout="t2t", base=base), np.concatenate([np.sin(angles), np.cos(angles)], 1))


def test_learned_gathers_rows_for_any_position_shape():
    table = rng.standard_normal((5, 3))
    positions = np.array([[0, 4, 2], [1, 1, 3]])
    out = learned(table, positions)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[1, 2], table[3])
    np.testing.assert_array_equal(out.reshape(-1, 3), table[positions.ravel()])


def _pairs(layout, r):
    """Channel index pairs rotated together."""
    if layout == "half_split":
        return np.arange(r // 2), r // 2 + np.arange(r // 2)
    return np.arange(0, r, 2), np.arange(1, r, 2)


@pytest.mark.parametrize("layout", ["half_split", "interleaved"])
def test_rope_norms_position_zero_and_partial(layout):
    x = rng.standard_normal((2, 3, 5, 8))
    y = rope(x, np.arange(5) * 7, layout=layout)
    a, b = _pairs(layout, 8)
    close(np.hypot(y[..., a], y[..., b]), np.hypot(x[..., a], x[..., b]))
    np.testing.assert_array_equal(rope(x, np.zeros(5, dtype=int), layout=layout), x)
    y = rope(np.array([1.0, 0.0]).reshape(1, 1, 1, 2), [1], layout=layout)
    np.testing.assert_allclose(y.ravel(), [math.cos(1), math.sin(1)], rtol=1e-15)
    # Partial rotary: the tail passes through; the head rotates as if it were all of x.
    x = rng.standard_normal((1, 2, 6, 12))
    y = rope(x, np.arange(6) + 3, layout=layout, rotary_dim=4)
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
    assert not np.allclose(y[..., :4], x[..., :4])
    # The frequencies use rotary_dim, not D, in their exponent.
    np.testing.assert_array_equal(y[..., :4], rope(x[..., :4], np.arange(6) + 3, layout=layout))


@pytest.mark.parametrize("rotary_dim", [None, 4])
def test_rope_layouts_agree_after_permuting_channels(rotary_dim):
    d = 10
    r = d if rotary_dim is None else rotary_dim
    x = rng.standard_normal((2, 2, 4, d))
    positions = rng.integers(0, 100, size=(2, 4))
    # Interleaved pair (2c, 2c+1) holds what half-split pair (c, c + r/2) holds.
    perm = np.concatenate([np.ravel(np.column_stack(_pairs("half_split", r))), np.arange(r, d)])
    half = rope(x, positions, rotary_dim=rotary_dim)
    inter = rope(x[..., perm], positions, layout="interleaved", rotary_dim=rotary_dim)
    np.testing.assert_allclose(inter, half[..., perm], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("layout", ["half_split", "interleaved"])
def test_rope_scores_depend_only_on_relative_position(layout):
    n, d = 6, 8
    q, k = (np.broadcast_to(rng.standard_normal(d), (2, 1, n, d)) for _ in range(2))
    # Two batch rows whose positions differ by an offset, as with a KV cache.
    positions = np.stack([np.arange(n), np.arange(n) + 1000])
    qr, kr = rope(q, positions, layout=layout), rope(k, positions, layout=layout)
    scores = qr @ kr.swapaxes(-1, -2)  # scores[b, 0, m, n] = dot(rope(q, m), rope(k, n))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(scores[0, 0, 1:, 1:], scores[0, 0, :-1, :-1], rtol=1e-12, atol=1e-12)


def test_alibi_slopes_paper_recipe():
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-e for e in range(1, 9)], rtol=1e-15)
    np.testing.assert_allclose(alibi_slopes(1), [2.0**-8], rtol=1e-15)
    twelve = [2.0**-e for e in range(1, 9)] + [2.0**-e for e in (0.5, 1.5, 2.5, 3.5)]
    np.testing.assert_allclose(alibi_slopes(12), twelve, rtol=1e-15)
    six = [2.0**-e for e in (2, 4, 6, 8, 1, 3)]
    np.testing.assert_allclose(alibi_slopes(6), six, rtol=1e-15)


def test_alibi_bias_forms():
    slopes = np.array([0.5, 0.25])
    sym = alibi_bias(slopes, 2, 4)  # offset 2: query i sits at key position i + 2
    np.testing.assert_array_equal(sym[0], -0.5 * np.array([[2, 1, 0, 1], [3, 2, 1, 0]]))
    causal = alibi_bias(slopes, 2, 4, form="causal")
    np.testing.assert_array_equal(causal[1], 0.25 * np.array([[-2, -1, 0, 1], [-3, -2, -1, 0]]))
    visible = np.arange(4)[None, :] <= np.arange(2)[:, None] + 2
    np.testing.assert_array_equal(sym[:, visible], causal[:, visible])
    assert alibi_bias(slopes, 0, 3).shape == (2, 0, 3)


def slow_bucket(rel, bidirectional, num_buckets, max_distance):
    """The clause transcribed to scalar Python: HF's steps, each rounded to float32."""
    n, out = num_buckets, 0
    if bidirectional:
        n //= 2
        out += n if rel > 0 else 0
        rel = abs(rel)
    else:
        rel = -min(rel, 0)
    exact = n // 2
    if rel < exact:
        return out + rel
    f32 = np.float32
    log_ratio = f32(math.log(f32(rel) / f32(exact)))  # the float32 nearest the real log
    large = exact + int(log_ratio / f32(math.log(max_distance / exact)) * f32(n - exact))
    return out + min(large, n - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(
    "num_buckets,max_distance", [(32, 128), (16, 50), (8, 20), (64, 256), (5, 7), (128, 128), (18, 128), (34, 27)]
)
def test_t5_bucket_matches_scalar_transcription(bidirectional, num_buckets, max_distance):
    rel = np.arange(-300, 301)
    got = t5_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    want = [slow_bucket(r, bidirectional, num_buckets, max_distance) for r in rel.tolist()]
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0 and got.max() < num_buckets


def test_t5_bucket_pinned_float32_values():
    """Issue 14: where float32 and float64 log bins differ, the float32 one (HF's) is the bucket."""
    assert t5_bucket([8], bidirectional=True, num_buckets=18, max_distance=128).tolist() == [14]  # float64: 13
    assert t5_bucket([18], bidirectional=True, num_buckets=34, max_distance=27).tolist() == [30]  # float64: 31


def hf_bucket(torch, relative_position, bidirectional, num_buckets, max_distance):
    """HF ``T5Attention._relative_position_bucket``, transcribed literally (torch on the CPU)."""
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets.numpy()


def test_t5_bucket_matches_hf_except_where_torch_log_is_an_ulp_off():
    """Every setting with <= 64 buckets and max_distance <= 130, offsets -300 .. 300.

    PyTorch's CPU float32 log is within one ulp, not correctly rounded; the clause's is. So HF's
    bucket may differ only at an offset whose float32 ratio torch's log rounds the other way.
    """
    torch = pytest.importorskip("torch")
    rel = np.arange(-300, 301)
    configs = differing = 0
    for bidirectional in (True, False):
        for num_buckets in range(2, 65):
            exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
            for max_distance in range(exact + 1, 131) if exact >= 1 else ():
                kwargs = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
                ours, hf = t5_bucket(rel, **kwargs), hf_bucket(torch, torch.from_numpy(rel), **kwargs)
                configs += 1
                if np.array_equal(ours, hf):
                    continue
                differing += 1
                ratio = (np.abs(rel) if bidirectional else np.maximum(-rel, 0)).astype(np.float32) / np.float32(exact)
                torch_log = torch.log(torch.from_numpy(ratio)).numpy()
                with np.errstate(divide="ignore"):  # offset 0: both logs are -inf
                    exact_log = np.log(ratio.astype(np.float64)).astype(np.float32)
                assert np.all((torch_log != exact_log)[ours != hf]), kwargs
    assert configs > 10000 and differing < configs / 500, (configs, differing)


def test_t5_bias_gathers_table_entries():
    table = np.arange(32 * 3, dtype=np.float64).reshape(32, 3)
    q_pos, k_pos = np.array([0, 5, 200]), np.array([3, 0, 40, 150])
    bias = t5_bias(table, q_pos, k_pos)
    assert bias.shape == (3, 3, 4)
    for h, i, j in np.ndindex(bias.shape):
        assert bias[h, i, j] == table[slow_bucket(k_pos[j] - q_pos[i], True, 32, 128), h]


def plain_attention(q, k, v, scale):
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def test_shaw_with_zero_tables_is_plain_attention():
    q, k, v = (rng.standard_normal(s) for s in [(2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7)])
    out = shaw(q, k, v, rel_k=np.zeros((5, 5)), rel_v=np.zeros((5, 7)), max_relative=2)
    close(out, plain_attention(q, k, v, 5**-0.5))


def test_shaw_max_relative_zero_with_constant_tables():
    q, k, v = (rng.standard_normal(s) for s in [(1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 6)])
    rel_k, rel_v = rng.standard_normal((1, 4)), rng.standard_normal((1, 6))
    out = shaw(q, k, v, rel_k=rel_k, rel_v=rel_v, max_relative=0, scale=0.7)
    # q . rel_k[0] is a per-row constant (softmax ignores it); rel_v[0] is added to every row.
    close(out, plain_attention(q, k, v, 0.7) + rel_v[0])


def test_shaw_matches_the_formula_by_loops():
    q, k, v = (rng.standard_normal(s) for s in [(1, 2, 4, 3), (1, 2, 6, 3), (1, 2, 6, 2)])
    m = 2
    rel_k, rel_v = rng.standard_normal((2 * m + 1, 3)), rng.standard_normal((2 * m + 1, 2))
    out = shaw(q, k, v, rel_k=rel_k, rel_v=rel_v, max_relative=m, scale=0.9)
    for h, i in np.ndindex(2, 4):
        r = [min(max(j - i, -m), m) + m for j in range(6)]
        s = np.array([0.9 * q[0, h, i] @ (k[0, h, j] + rel_k[r[j]]) for j in range(6)])
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        want = sum(p[j] * (v[0, h, j] + rel_v[r[j]]) for j in range(6))
        close(out[0, h, i], want)


def _rope(x=None, positions=(0, 1, 2), **kw):
    return rope(np.zeros((1, 1, 3, 4)) if x is None else x, positions, **kw)


def _shaw(**kw):
    """``shaw`` on zero inputs of fitting shapes, ``kw`` replacing any of them."""
    args = (
        dict(
            q=np.zeros((1, 2, 3, 4)),
            k=np.zeros((1, 2, 5, 4)),
            v=np.zeros((1, 2, 5, 6)),
            rel_k=np.zeros((3, 4)),
            rel_v=np.zeros((3, 6)),
            max_relative=1,
        )
        | kw
    )
    return shaw(args.pop("q"), args.pop("k"), args.pop("v"), **args)


VALUE_ERRORS = [  # (call, the argument its message must name)
    (lambda: sinusoidal([0, 1], 5), "dim"),
    (lambda: sinusoidal([0, 1], 0), "dim"),
    (lambda: sinusoidal([0, 1], 4, layout="sincos"), "layout"),
    (lambda: sinusoidal([-1, 1], 4), "positions"),
    (lambda: sinusoidal([0, 1], 2, layout="t2t"), "dim"),  # dim/2 - 1 = 0 divides the exponent
    (lambda: learned(np.zeros((4, 2)), [4]), "positions"),
    (lambda: learned(np.zeros((4, 2)), [-1]), "positions"),
    (lambda: _rope(positions=[0, 1]), "positions"),
    (lambda: _rope(positions=[[0, 1, 2]] * 2), "positions"),
    (lambda: _rope(positions=[0, -1, 2]), "positions"),
    (lambda: _rope(layout="neox"), "layout"),
    (lambda: _rope(rotary_dim=3), "rotary_dim"),
    (lambda: _rope(rotary_dim=6), "rotary_dim"),
    (lambda: _rope(rotary_dim=0), "rotary_dim"),
    (lambda: _rope(np.zeros((1, 1, 3, 5))), "rotary_dim"),  # the default, an odd D
    (lambda: alibi_slopes(0), "num_heads"),
    (lambda: alibi_bias(np.array([0.5]), 2, 2, form="fairseq"), "form"),
    (lambda: t5_bucket([0], num_buckets=1), "num_buckets"),
    (lambda: t5_bucket([0], num_buckets=3), "num_buckets"),  # exact = 0: log(rel / 0)
    (lambda: t5_bucket([0], max_distance=8), "max_distance"),
    (lambda: t5_bucket([0], bidirectional=False, max_distance=16), "max_distance"),
    (lambda: t5_bias(np.zeros((32, 2)), [0, -1], [0]), "q_positions"),
    (lambda: t5_bias(np.zeros((16, 2)), [0], [0]), "table"),
    (lambda: _shaw(max_relative=-1), "max_relative"),
    (lambda: _shaw(rel_k=np.zeros((5, 4))), "rel_k"),
    (lambda: _shaw(rel_v=np.zeros((3, 4))), "rel_v"),
    (lambda: _shaw(k=np.zeros((1, 1, 5, 4))), "k must"),
    (lambda: _shaw(k=np.zeros((1, 2, 5, 3))), "k must"),
    (lambda: _shaw(v=np.zeros((1, 2, 4, 6))), "v must"),
]
TYPE_ERRORS = [
    (lambda: sinusoidal([0.0, 1.0], 4), "positions"),
    (lambda: learned(np.zeros((4, 2), dtype=int), [0]), "table"),
    (lambda: _rope(np.zeros((1, 1, 3, 4), dtype=int)), "x"),
    (lambda: _rope(np.zeros((1, 1, 3, 4), dtype=complex)), "x"),
    (lambda: _rope(positions=[0.0, 1.0, 2.0]), "positions"),
    (lambda: alibi_slopes(True), "num_heads"),
    (lambda: alibi_bias(np.array([1, 2]), 2, 2), "slopes"),
    (lambda: t5_bucket([0.5]), "relative_position"),
    (lambda: _shaw(q=np.zeros((1, 2, 3, 4), dtype=np.int32)), "q must"),
]


@pytest.mark.parametrize("call,match", VALUE_ERRORS)
def test_bad_values_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call,match", TYPE_ERRORS)
def test_bad_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()
