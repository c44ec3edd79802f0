"""The linear-attention and Performer references: argument errors, agreement of the forms, and a
scalar transcription of the clause texts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnspec import reference
from attnspec.reference import linear, performer

Q, K, V = np.ones((2, 3, 4, 5)), np.ones((2, 3, 6, 5)), np.ones((2, 3, 6, 2))
W = np.ones((7, 5))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(feature_map="softmax"), ValueError, "feature_map must be one of"),
        (dict(form="fused"), ValueError, "form must be one of"),
        (dict(form="chunked", chunk_size=0), ValueError, "chunk_size must be >= 1; got 0"),
        (dict(form="chunked", chunk_size=2.0), TypeError, "chunk_size must be an integer"),
        (dict(form="chunked"), TypeError, "chunk_size must be an integer; got None"),
        (dict(form="recurrent", chunk_size=4), ValueError, "chunk_size is only for form='chunked'"),
        (dict(causal=1), TypeError, "causal must be a bool"),
        (dict(normalize="yes"), TypeError, "normalize must be a bool"),
        (dict(causal=True), ValueError, "causal linear attention needs N_q == N_k; got N_q = 4, N_k = 6"),
        (dict(feature_map="identity"), ValueError, "normalize=True needs a non-negative feature map"),
        (dict(scale=0.0), ValueError, "scale must be finite and > 0"),
        (dict(eps=-1e-6), ValueError, "eps must be >= 0"),
        (dict(eps=float("nan")), ValueError, "eps must be finite"),
        (dict(initial_state=np.ones((2, 3, 5, 3))), ValueError, r"initial_state must have shape \(2, 3, 5, 2\)"),
        (dict(initial_normalizer=np.ones((2, 3, 4))), ValueError, r"initial_normalizer must have shape \(2, 3, 5\)"),
        (
            dict(initial_normalizer=-np.ones((2, 3, 5))),
            ValueError,
            "initial_normalizer must be >= 0 with normalize=True",
        ),
        (dict(initial_state=np.full((2, 3, 5, 2), np.inf)), ValueError, "initial_state must be finite"),
    ],
)
def test_linear_attention_rejects(kwargs, error, message):
    with pytest.raises(error, match=message):
        linear.linear_attention(Q, K, V, **kwargs)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((Q.astype(int), K, V), TypeError, "q must be a real floating-point array"),
        ((Q, K[..., :4], V), ValueError, r"k must have shape \(B, H, N_k, D_qk\) = \(2, 3, N_k >= 1, 5\)"),
        ((Q, K[:, :2], V), ValueError, "k must have shape"),
        ((Q, K, V[:, :, :5]), ValueError, r"v must have shape \(B, H, N_k, D_v\)"),
        ((Q[:, :, :0], K, V), ValueError, "q must have N_q >= 1"),
    ],
)
def test_shapes_are_checked(args, error, message):
    for fn in (linear.linear_attention, linear.efficient_attention):
        with pytest.raises(error, match=message):
            fn(*args)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: performer.performer_features(np.ones((3, 5)), np.ones((7, 4))),
            ValueError,
            r"projection must have shape \(m >= 1, D\) with D = x.shape\[-1\] = 5",
        ),
        (
            lambda: performer.performer_features(np.ones((3, 5)), np.ones(5)),
            ValueError,
            "projection must have 2 dimensions",
        ),
        (
            lambda: performer.performer_features(np.ones((3, 5)), np.ones((0, 5))),
            ValueError,
            "projection must have shape",
        ),
        (
            lambda: performer.performer_features(np.ones((3, 5)), np.full((2, 5), np.nan)),
            ValueError,
            "projection must be finite",
        ),
        (lambda: performer.performer(Q, K, V, projection=W[:, :4]), ValueError, "projection must have shape"),
        (lambda: performer.performer(Q, K, V, projection=W, scale=-1.0), ValueError, "scale must be finite and > 0"),
        (lambda: performer.performer(Q, K, V, projection=W, causal=True), ValueError, "needs N_q == N_k"),
        (
            lambda: performer.orthogonal_projection(np.ones((1, 5, 5)), np.ones(7)),
            ValueError,
            r"gaussian_blocks must have shape \(ceil\(m / D\), D, D\) for m = len\(norms\) = 7",
        ),
        (
            lambda: performer.orthogonal_projection(np.ones((2, 5, 4)), np.ones(7)),
            ValueError,
            "gaussian_blocks must have shape",
        ),
        (
            lambda: performer.orthogonal_projection(np.eye(3)[None], -np.ones(3)),
            ValueError,
            "norms must be finite and >= 0",
        ),
        (
            lambda: performer.orthogonal_projection(np.zeros((1, 3, 3)), np.ones(3)),
            ValueError,
            r"gaussian_blocks\[0\] is singular",
        ),
        (
            lambda: performer.orthogonal_projection(
                np.stack([np.eye(3), np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 0.5])]), np.ones(5)
            ),
            ValueError,
            r"gaussian_blocks\[1\] is singular: \|R\[1, 1\]\|",
        ),
        (
            lambda: performer.orthogonal_projection(
                np.array([[[1.0, 1.0], [1.0, np.nextafter(1.0, 2.0)]]]), np.ones(2)
            ),
            ValueError,
            r"gaussian_blocks\[0\] is singular",
        ),
        (
            lambda: performer.orthogonal_projection(np.eye(3), np.ones(3)),
            ValueError,
            "gaussian_blocks must have 3 dimensions",
        ),
    ],
)
def test_performer_rejects(call, error, message):
    with pytest.raises(error, match=message):
        call()


@st.composite
def small_cases(draw):
    feature_map = draw(st.sampled_from(linear.FEATURE_MAPS))
    causal = draw(st.booleans())
    b, h, d, d_v = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    n_q = draw(st.integers(1, 9))
    n_k = n_q if causal else draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q, k = rng.standard_normal((b, h, n_q, d)), rng.standard_normal((b, h, n_k, d))
    v = rng.standard_normal((b, h, n_k, d_v))
    normalize = feature_map != "identity" and draw(st.booleans())
    options = dict(
        feature_map=feature_map,
        causal=causal,
        normalize=normalize,
        scale=draw(st.sampled_from([1.0, 0.3])),
        eps=draw(st.sampled_from([0.0, 0.25])) if normalize else 0.0,
    )
    if draw(st.booleans()):
        options["initial_state"] = rng.standard_normal((b, h, d, d_v))
        options["initial_normalizer"] = rng.random((b, h, d)) * 3
    return q, k, v, options


def scalar_linear(q, k, v, *, feature_map, causal, normalize, scale, eps, initial_state=None, initial_normalizer=None):
    """The clause ``linear.parallel`` transcribed with scalar loops and ``math``."""

    def phi(x):
        return {"elu+1": x + 1 if x > 0 else math.exp(x), "relu": max(x, 0.0), "identity": x}[feature_map]

    b_n, h_n, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    out = np.zeros((b_n, h_n, n_q, d_v))
    for b in range(b_n):
        for h in range(h_n):
            for i in range(n_q):
                fq = [scale * phi(q[b, h, i, c]) for c in range(d)]
                num = [
                    sum(fq[c] * (0.0 if initial_state is None else initial_state[b, h, c, e]) for c in range(d))
                    for e in range(d_v)
                ]
                den = sum(
                    fq[c] * (0.0 if initial_normalizer is None else initial_normalizer[b, h, c]) for c in range(d)
                )
                for j in range(n_k if not causal else i + 1):
                    a = sum(fq[c] * phi(k[b, h, j, c]) for c in range(d))
                    num = [num[e] + a * v[b, h, j, e] for e in range(d_v)]
                    den += a
                if not normalize:
                    out[b, h, i] = num
                elif den + eps != 0:
                    out[b, h, i] = [x / (den + eps) for x in num]
    return out


@settings(max_examples=150, deadline=None)
@given(small_cases())
def test_reference_matches_the_scalar_transcription(case):
    q, k, v, options = case
    np.testing.assert_allclose(
        linear.linear_attention(q, k, v, **options), scalar_linear(q, k, v, **options), rtol=1e-12, atol=1e-12
    )


@settings(max_examples=150, deadline=None)
@given(small_cases(), st.integers(1, 11))
def test_the_three_forms_agree(case, chunk_size):
    """Parallel, recurrent and chunked (any C, dividing N or not) agree to ~1e-12, final state too."""
    q, k, v, options = case
    want = linear.linear_attention(q, k, v, **options, output_final_state=True)
    for form, c in (("recurrent", None), ("chunked", chunk_size)):
        got = linear.linear_attention(q, k, v, **options, form=form, chunk_size=c, output_final_state=True)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_final_state_is_the_sum_over_all_keys_and_pieces_equal_the_whole():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 2, 11, 4)) for _ in range(3))
    out, s, z = linear.linear_attention(q, k, v, causal=True, output_final_state=True)
    fk = linear.phi(k, "elu+1")
    np.testing.assert_allclose(s, np.einsum("bhnf,bhnd->bhfd", fk, v), rtol=1e-13)
    np.testing.assert_allclose(z, fk.sum(axis=2), rtol=1e-13)
    first, s1, z1 = linear.linear_attention(q[:, :, :5], k[:, :, :5], v[:, :, :5], causal=True, output_final_state=True)
    second = linear.linear_attention(
        q[:, :, 5:],
        k[:, :, 5:],
        v[:, :, 5:],
        causal=True,
        form="chunked",
        chunk_size=4,
        initial_state=s1,
        initial_normalizer=z1,
    )
    np.testing.assert_allclose(np.concatenate([first, second], axis=2), out, rtol=1e-12, atol=1e-12)


def test_zero_denominator_rows_are_exactly_zero_in_every_form():
    q = np.array([[-1.0, -2.0], [1.0, -0.5], [-0.5, -0.1]]).reshape(1, 1, 3, 2)
    k = np.array([[-1.0, 3.0], [2.0, -1.0], [1.0, 1.0]]).reshape(1, 1, 3, 2)
    v = np.arange(6.0).reshape(1, 1, 3, 2)
    for form, c in (("parallel", None), ("recurrent", None), ("chunked", 2)):
        out = linear.linear_attention(q, k, v, feature_map="relu", causal=True, form=form, chunk_size=c)
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[0, 0, [0, 2]], 0.0)  # relu(q) = 0: no feature to read
        np.testing.assert_allclose(out[0, 0, 1], v[0, 0, 1])  # row 1: relu [1, 0] . [0, 3] = 0, only key 1 counts
    # with eps the rule is the eps -> 0+ limit: still 0
    np.testing.assert_array_equal(linear.linear_attention(q, k, v, feature_map="relu", eps=1.0)[0, 0, 0], 0.0)


def test_elu_plus_one_is_exp_below_zero_to_full_relative_accuracy():
    x = np.array([-40.0, -17.0, 0.0, 2.5])
    np.testing.assert_array_equal(linear.phi(x, "elu+1"), [math.exp(-40), math.exp(-17), 1.0, 3.5])


def test_efficient_attention_matches_the_formula_and_stays_in_the_value_range():
    rng = np.random.default_rng(5)
    q, k, v = (
        rng.standard_normal((1, 2, 6, 3)) * 40,
        rng.standard_normal((1, 2, 9, 3)) * 40,
        rng.standard_normal((1, 2, 9, 4)),
    )
    out = linear.efficient_attention(q, k, v)
    for h in range(2):
        rho_q = np.array([[math.exp(x) for x in row] for row in q[0, h] - q[0, h].max()])
        rho_q /= rho_q.sum(axis=1, keepdims=True)
        rho_k = np.exp(k[0, h] - k[0, h].max(axis=0))
        rho_k /= rho_k.sum(axis=0)
        np.testing.assert_allclose(out[0, h], rho_q @ (rho_k.T @ v[0, h]), rtol=1e-12, atol=1e-13)
    assert np.abs(out).max() <= np.abs(v).max()


def test_orthogonal_projection_is_the_sign_fixed_qr():
    rng = np.random.default_rng(7)
    d, m = 5, 12
    g, norms = rng.standard_normal((3, d, d)), np.sqrt(rng.chisquare(d, size=m))
    w = performer.orthogonal_projection(g, norms)
    assert w.shape == (m, d)
    for b in range(3):
        rows = slice(b * d, min((b + 1) * d, m))
        block = w[rows] / norms[rows, None]
        np.testing.assert_allclose(block @ block.T, np.eye(block.shape[0]), atol=1e-13)
        r = block @ g[b]  # = rows of R: upper triangular with a positive diagonal
        np.testing.assert_allclose(np.tril(r, -1), 0, atol=1e-12)
        assert (np.diagonal(r) > 0).all()


def test_performer_features_are_unbiased_and_performer_tends_to_softmax():
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal(4) * 0.4, rng.standard_normal(4) * 0.4
    w = rng.standard_normal((200_000, 4))
    f = performer.performer_features(np.stack([x, y]), w)
    products = f[0] * f[1] * w.shape[0]
    standard_error = products.std() / math.sqrt(w.shape[0])
    assert abs(products.mean() - math.exp(x @ y)) < 5 * standard_error
    q, k, v = (rng.standard_normal((1, 1, 8, 4)) * scale for scale in (0.5, 0.5, 1.0))
    for causal, mask in ((False, None), (True, "top_left")):
        approx = performer.performer(q, k, v, projection=rng.standard_normal((100_000, 4)), causal=causal)
        assert np.abs(approx - reference.sdpa(q, k, v, causal=mask)).max() < 0.02


def test_performer_is_linear_attention_with_the_scaled_features():
    rng = np.random.default_rng(13)
    q, k, v, w = (
        rng.standard_normal((2, 2, 7, 4)),
        rng.standard_normal((2, 2, 7, 4)),
        rng.standard_normal((2, 2, 7, 3)),
        rng.standard_normal((9, 4)),
    )
    for causal in (False, True):
        fq = performer.performer_features(q * 4**-0.25, w)
        fk = performer.performer_features(k * 4**-0.25, w)
        zs, zz = np.zeros((2, 2, 9, 3)), np.zeros((2, 2, 9))
        parts = linear.parallel(fq, fk, v, zs, zz, causal=causal)
        want = linear.finish(parts.num, parts.den, normalize=True)
        np.testing.assert_allclose(
            performer.performer(q, k, v, projection=w, causal=causal), want, rtol=1e-12, atol=1e-13
        )
        # the stabilisers hold where the unshifted features would underflow to 0 / 0
        big = performer.performer(q * 40, k * 40, v, projection=w, causal=causal)
        assert np.isfinite(big).all() and np.abs(big).max() <= np.abs(v).max() + 1e-12


def test_causal_performer_is_the_masked_formula_across_chunks():
    """Keys of very different norms move the running key maximum inside and across chunks (N > CHUNK)."""
    rng = np.random.default_rng(17)
    n, d, m = 2 * performer.CHUNK + 22, 8, 20
    q, k, v = (rng.standard_normal((2, 3, n, d)) for _ in range(3))
    k *= rng.uniform(0.2, 4.0, (2, 3, n, 1))
    w = rng.standard_normal((m, d))
    fq, fk = performer.performer_features(q * d**-0.25, w), performer.performer_features(k * d**-0.25, w)
    parts = linear.parallel(fq, fk, v, np.zeros((2, 3, m, d)), np.zeros((2, 3, m)), causal=True)
    want = linear.finish(parts.num, parts.den, normalize=True)
    np.testing.assert_allclose(performer.performer(q, k, v, projection=w, causal=True), want, rtol=1e-12, atol=1e-13)


def test_causal_performer_key_shift_depends_on_earlier_keys_only():
    """Key 0 with logits near -1000 is row 0's only key: row 0 is v_0, whatever the later keys hold
    (a shift by the maximum over all keys would underflow it to 0 and make it depend on them)."""
    rng = np.random.default_rng(19)
    q, k, v = (rng.standard_normal((1, 2, 6, 16)) for _ in range(3))
    w = rng.standard_normal((16, 16))
    k[:, :, 0] *= 22
    out = performer.performer(q, k, v, projection=w, causal=True)
    np.testing.assert_allclose(out[:, :, 0], v[:, :, 0], rtol=1e-14)
    for t in range(5):
        k_bad = k.copy()
        k_bad[:, :, t + 1 :] = 1e4
        np.testing.assert_array_equal(
            performer.performer(q, k_bad, v, projection=w, causal=True)[:, :, : t + 1], out[:, :, : t + 1]
        )
