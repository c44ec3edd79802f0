"""Decoding against a paged KV cache (clauses ``flash.paged*``): the reference against a scalar
transcription of the clause texts, the errors of the reference, the ``numpy`` and the ``torch``
backends, and the defined results at the edges (an empty pool, entries that are no page, a table
far wider than the lengths, a mask sized to the table's capacity).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnspec import load_backend, reference
from attnspec.reference.paged import paged_decode

NUMPY = load_backend("numpy")
NAN = float("nan")


def scalar_paged(q, k_pages, v_pages, table, lens, layout="NHD", scale=None):
    """``(out, lse)`` straight from the text of ``flash.paged``: token ``t`` of sequence ``b`` at
    slot ``t % page_size`` of page ``table[b, t // page_size]``; query ``i`` sees ``t <= len - N_new + i``."""
    b_n, h_q, n_new, d = q.shape
    size, h_kv = (k_pages.shape[1], k_pages.shape[2]) if layout == "NHD" else (k_pages.shape[2], k_pages.shape[1])
    scale = 1 / math.sqrt(d) if scale is None else scale
    out, lse = np.zeros((b_n, h_q, n_new, v_pages.shape[3])), np.full((b_n, h_q, n_new), -math.inf)
    for b in range(b_n):
        for h in range(h_q):
            g = h // (h_q // h_kv)
            for i in range(n_new):
                seen = [t for t in range(int(lens[b])) if t <= lens[b] - n_new + i]
                if not seen:
                    continue
                at = [
                    (table[b, t // size], t % size, g) if layout == "NHD" else (table[b, t // size], g, t % size)
                    for t in seen
                ]
                s = [scale * sum(q[b, h, i, c] * k_pages[a][c] for c in range(d)) for a in at]
                top = max(s)
                total = sum(math.exp(x - top) for x in s)
                lse[b, h, i] = top + math.log(total)
                for c in range(v_pages.shape[3]):
                    out[b, h, i, c] = sum(
                        math.exp(x - lse[b, h, i]) * v_pages[a][c] for x, a in zip(s, at, strict=True)
                    )
    return out, lse


def random_paged(seed: int, *, batch=2, h_q=4, h_kv=2, n_new=2, page_size=3, max_pages=4, d=5, d_v=3, layout="NHD"):
    """A pool with NaN in every slot no sequence uses, a random table (pages shared and repeated at
    random) and random lengths; entries past a sequence's pages are -1, past the pool or at a NaN page."""
    rng = np.random.default_rng(seed)
    num_pages = batch * max_pages + 1
    lens = rng.integers(0, max_pages * page_size + 1, size=batch)
    table = rng.integers(0, num_pages - 1, size=(batch, max_pages))  # page num_pages - 1: garbage
    shape = (num_pages, page_size, h_kv) if layout == "NHD" else (num_pages, h_kv, page_size)
    k_pages, v_pages = rng.standard_normal(shape + (d,)), rng.standard_normal(shape + (d_v,))
    k_pages[-1], v_pages[-1] = NAN, NAN
    for b in range(batch):
        used = -(-lens[b] // page_size)
        table[b, used:] = rng.choice([-1, num_pages, num_pages - 1, 2**40], size=max_pages - used)
    return rng.standard_normal((batch, h_q, n_new, d)), k_pages, v_pages, table, lens


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("seed", range(8))
def test_reference_matches_the_scalar_transcription(seed, layout):
    q, k_pages, v_pages, table, lens = random_paged(seed, layout=layout, page_size=1 + seed % 4)
    out, lse = paged_decode(q, k_pages, v_pages, block_table=table, cache_lens=lens, layout=layout, num_splits=2)
    ref_out, ref_lse = scalar_paged(q, k_pages, v_pages, table, lens, layout)
    np.testing.assert_allclose(out, ref_out, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    np.testing.assert_allclose(lse[np.isfinite(ref_lse)], ref_lse[np.isfinite(ref_lse)], atol=1e-12)


def test_layout_is_named_not_inferred():
    """H_kv = page_size fits both layouts: the argument decides, and the two readings differ."""
    q, k_pages, v_pages, table, lens = random_paged(0, page_size=2, h_kv=2)
    lens[:], table[:] = 7, [[6, 1, 2, 3], [4, 5, 0, 7]]
    nhd, _ = paged_decode(q, k_pages, v_pages, block_table=table, cache_lens=lens)
    hnd, _ = paged_decode(
        q,
        k_pages.swapaxes(1, 2).copy(),
        v_pages.swapaxes(1, 2).copy(),
        block_table=table,
        cache_lens=lens,
        layout="HND",
    )
    misread, _ = paged_decode(q, k_pages, v_pages, block_table=table, cache_lens=lens, layout="HND")
    np.testing.assert_allclose(hnd, nhd, atol=1e-12)
    assert np.abs(misread - nhd).max() > 1e-3


# Arguments of the error cases: B = 2, H_q = 4, H_kv = 2, pages of 4 slots, tables of 3 entries.
Q = np.ones((2, 4, 1, 8))
KP, VP = np.ones((5, 4, 2, 8)), np.ones((5, 4, 2, 6))
TABLE, LENS = np.array([[0, 1, 2], [3, 4, -1]]), np.array([12, 5])


def call(f, q=Q, k_pages=KP, v_pages=VP, **kwargs):
    return f(q, k_pages, v_pages, **{"block_table": TABLE, "cache_lens": LENS, **kwargs})


# (category, call(f), error, message): f is the reference, the numpy backend's or the torch backend's method
# fmt: off
CASES = [
    ("rank", lambda f: call(f, q=Q[0]), ValueError, "q must have 4 dimensions"),
    ("rank", lambda f: call(f, k_pages=KP[0]), ValueError, "k_pages must have 4 dimensions"),
    ("shape", lambda f: call(f, v_pages=VP[:4]), ValueError, r"v_pages must have k_pages's first three axes \(5, 4, 2\)"),
    ("shape", lambda f: call(f, v_pages=VP[:, :, :1]), ValueError, "v_pages must have k_pages's first three axes"),
    ("shape", lambda f: call(f, k_pages=KP[..., :7], v_pages=VP), ValueError, "k_pages's head dim must equal q's"),
    ("shape", lambda f: call(f, q=Q[:, :3]), ValueError, r"H_q = 3 \(q.shape\[1\]\) must be a multiple of H_kv = 2"),
    ("empty", lambda f: call(f, q=Q[..., :0], k_pages=KP[..., :0]), ValueError, "head dim D_qk must be >= 1"),
    ("empty", lambda f: call(f, k_pages=KP[:, :0], v_pages=VP[:, :0]), ValueError, "page_size must be >= 1"),
    ("dtype", lambda f: call(f, block_table=TABLE.astype(float)), TypeError, "block_table must be an integer array"),
    ("dtype", lambda f: call(f, cache_lens=LENS.astype(float)), TypeError, "cache_lens must be an integer array"),
    ("rank", lambda f: call(f, block_table=TABLE[0]), ValueError, r"block_table must have shape \(B, max_pages\) with B = 2"),
    ("shape", lambda f: call(f, block_table=TABLE[:1]), ValueError, r"block_table must have shape \(B, max_pages\)"),
    ("shape", lambda f: call(f, cache_lens=LENS[:1]), ValueError, r"cache_lens must have shape \(2,\)"),
    ("range", lambda f: call(f, cache_lens=[13, 5]), ValueError, r"cache_lens must be <= max_pages \* page_size = 3 \* 4"),
    ("range", lambda f: call(f, cache_lens=[-1, 5]), ValueError, "cache_lens must be >= 0"),
    ("range", lambda f: call(f, cache_lens=[12, 9]), ValueError, r"block_table\[1, 2\] = -1 is not a page of the pool"),
    ("range", lambda f: call(f, block_table=TABLE + 1), ValueError, r"block_table\[1, 1\] = 5 is not a page .* num_pages = 5"),
    ("option", lambda f: call(f, layout="nhd"), ValueError, r"layout must be one of \('NHD', 'HND'\)"),
    ("option", lambda f: call(f, causal="bottom_right"), ValueError, r"decode sets \['causal'\] itself"),
    ("option", lambda f: call(f, kv_lens=LENS), ValueError, r"decode sets \['kv_lens'\] itself"),
    ("range", lambda f: call(f, num_splits=0), ValueError, "num_splits must be >= 1"),
]
# fmt: on


@pytest.mark.parametrize("backend", ["reference", "numpy"])
@pytest.mark.parametrize("category, make, error, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_a_clear_error(backend, category, make, error, message):
    f = paged_decode if backend == "reference" else NUMPY.paged_decode
    with pytest.raises(error, match=message):
        make(f)


def test_numpy_backend_refuses_undeclared_dtypes():
    with pytest.raises(TypeError, match="k_pages has dtype float16, which the numpy backend does not declare"):
        call(NUMPY.paged_decode, k_pages=KP.astype(np.float16))


def test_entries_not_in_use_may_hold_any_integer():
    """-1, past the pool, the extremes of int64: never dereferenced, no error; the result is decode's."""
    table = np.array([[0, 1, 2], [3, np.iinfo(np.int64).min, np.iinfo(np.int64).max]])
    out, lse = call(paged_decode, block_table=table, cache_lens=[12, 4])
    k = np.ones((2, 2, 12, 8))
    ref_out, ref_lse = reference.decode(Q, k, np.ones((2, 2, 12, 6)), cache_lens=[12, 4])
    np.testing.assert_allclose(out, ref_out)
    np.testing.assert_allclose(lse, ref_lse)


def test_empty_pool_and_no_tokens():
    """A pool of no pages is valid when no sequence has a token: every row is fully masked."""
    out, lse = call(paged_decode, k_pages=KP[:0], v_pages=VP[:0], block_table=np.full((2, 3), -1), cache_lens=[0, 0])
    assert (out == 0).all() and np.isneginf(lse).all()


torch = pytest.importorskip("torch")
TORCH = load_backend("torch")


def T(x):
    return torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x


def torch_call(**kwargs):
    """``f`` for the cases above: the torch backend's method, float arrays as tensors."""

    def f(q, k_pages, v_pages, **options):
        return TORCH.paged_decode(T(q), T(k_pages), T(v_pages), **{n: T(x) for n, x in options.items()})

    return f


@pytest.mark.parametrize("category, make, error, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_torch_backend_rejects(category, make, error, message):
    with pytest.raises(error, match=message):
        make(torch_call())


def test_torch_backend_rejects_arrays_and_mixed_dtypes():
    with pytest.raises(TypeError, match=r"k_pages must be a torch.Tensor .*; got ndarray"):
        TORCH.paged_decode(T(Q), KP, T(VP), block_table=TABLE, cache_lens=LENS)
    with pytest.raises(TypeError, match="q, k_pages, v_pages must share one dtype"):
        TORCH.paged_decode(T(Q), T(KP.astype(np.float32)), T(VP), block_table=TABLE, cache_lens=LENS)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("seed", range(4))
def test_torch_backend_equals_the_reference(seed, layout):
    """Random tables (shared, repeated, garbage past the lengths), the table and lengths as tensors."""
    q, k_pages, v_pages, table, lens = random_paged(seed, layout=layout, page_size=1 + seed)
    table[table > 2**31] = -1
    got = TORCH.paged_decode(
        T(q),
        T(k_pages),
        T(v_pages),
        block_table=torch.from_numpy(table),
        cache_lens=torch.from_numpy(lens),
        layout=layout,
    )
    want = paged_decode(q, k_pages, v_pages, block_table=table, cache_lens=lens, layout=layout)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-12)


def test_torch_backend_with_a_mask_over_the_capacity_and_a_wide_table():
    """A mask and a bias are sized to max_pages * page_size (the whole table is gathered); without
    them the cache ends after the longest sequence's pages, whatever the table's width."""
    q, k_pages, v_pages, table, lens = random_paged(3, page_size=2, max_pages=5)
    rng = np.random.default_rng(0)
    mask = rng.random((2, 1, 1, 10)) < 0.7
    bias = rng.standard_normal((2, 4, 2, 10))
    for options in (dict(mask=mask), dict(bias=bias), dict(alibi_slopes=np.full(4, 0.5), window=(3, 0))):
        got = TORCH.paged_decode(
            T(q),
            T(k_pages),
            T(v_pages),
            block_table=table,
            cache_lens=lens,
            **{n: torch.from_numpy(x) if isinstance(x, np.ndarray) else x for n, x in options.items()},
        )
        want = paged_decode(q, k_pages, v_pages, block_table=table, cache_lens=lens, **options)
        np.testing.assert_allclose(got[0].numpy(), want[0], atol=1e-12)
    wide = np.concatenate([table, np.full((2, 10_000), -1)], axis=1)
    got = TORCH.paged_decode(T(q), T(k_pages), T(v_pages), block_table=wide, cache_lens=lens)
    want = paged_decode(q, k_pages, v_pages, block_table=table, cache_lens=lens)
    np.testing.assert_allclose(got[0].numpy(), want[0], atol=1e-12)


def test_torch_backend_empty_pool():
    out, lse = TORCH.paged_decode(
        T(Q),
        T(KP[:0]),
        T(VP[:0]),
        block_table=np.full((2, 3), -1),
        cache_lens=[0, 0],
        mask=torch.ones(3 * 4, dtype=torch.bool),
    )
    assert bool((out == 0).all()) and bool(torch.isneginf(lse).all())
    out, lse = TORCH.paged_decode(T(Q), T(KP[:0]), T(VP[:0]), block_table=np.full((2, 3), -1), cache_lens=[0, 0])
    assert bool((out == 0).all()) and bool(torch.isneginf(lse).all())
