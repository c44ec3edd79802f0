"""Conformance of the positional encodings (spec section :mod:`attnspec.positional`)."""

import functools

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attnspec.conformance import conventions
from attnspec.conformance.calls import call, call_unguarded
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.strategies import declares, head_dims, lengths, sdpa_cases
from attnspec.conformance.tolerance import Bound, finite_max, positional_bound, rounding_bound, shaw_bound
from attnspec.reference import absolute, alibi, relative, rope

positions_1d = st.lists(st.one_of(st.integers(0, 20), st.integers(0, 70000)), min_size=1, max_size=40)
even_dims = st.sampled_from([2, 4, 6, 10, 64, 96, 128, 510])


def _check_sinusoidal(check, dtype, layout, positions, dim, base):
    pos = np.asarray(positions, dtype=np.int64)
    case = dict(positions=positions, dim=dim, layout=layout, base=base)
    out = call("sinusoidal", pos, dim, layout=layout, base=base)
    ref = absolute.sinusoidal(pos, dim, layout=layout, base=base)
    bound = positional_bound(
        ref,
        lambda a: absolute.sinusoidal(pos, dim, layout=layout, base=base, arithmetic=a),
        dtype,
        scale=1.0,
        propagation=1.0 + float(pos.max()),
    )
    with conventions.diagnosis(
        "sinusoidal",
        lambda alt: alt.sinusoidal(pos, dim, layout=layout, base=base),
        conventions.close_to(out, bound.value),
    ):
        check.close(out, ref, bound, what="pe", case=case)


@pytest.mark.clause("pe.sinusoidal.interleaved")
@given(positions=positions_1d, dim=even_dims, base=st.sampled_from([10000.0, 500000.0, 100.0]))
@example(positions=[0, 1, 65535], dim=6, base=10000.0)
def test_sinusoidal_interleaved(check, dtype, positions, dim, base):
    _check_sinusoidal(check, dtype, "interleaved", positions, dim, base)


@pytest.mark.clause("pe.sinusoidal.concat")
@given(positions=positions_1d, dim=even_dims, base=st.sampled_from([10000.0, 500000.0, 100.0]))
@example(positions=[0, 1, 65535], dim=6, base=10000.0)
def test_sinusoidal_concat(check, dtype, positions, dim, base):
    _check_sinusoidal(check, dtype, "concat", positions, dim, base)


@pytest.mark.clause("pe.sinusoidal.t2t")
@given(positions=positions_1d, dim=even_dims.filter(lambda d: d >= 4), base=st.sampled_from([10000.0, 500000.0, 100.0]))
@example(positions=[0, 1], dim=4, base=10000.0)  # w_1 = 1e-4 here, 0.01 with the concat clause's frequencies
@example(positions=[0, 1, 65535], dim=6, base=10000.0)
def test_sinusoidal_t2t(check, dtype, positions, dim, base):
    _check_sinusoidal(check, dtype, "t2t", positions, dim, base)


@pytest.mark.clause("pe.sinusoidal.t2t")
def test_sinusoidal_t2t_rejects_dim_2(check, dtype):
    """``dim = 2`` puts zero in the exponent's divisor ``dim/2 - 1``: an error, not a guess."""
    check.rejects(
        functools.partial(call_unguarded, "sinusoidal", np.arange(3), 2, layout="t2t"),
        what="dim = 2 with layout='t2t'",
        case=dict(dim=2, layout="t2t"),
    )


@pytest.mark.clause("pe.learned")
@given(
    max_positions=st.integers(1, 300),
    dim=st.integers(1, 16),
    shape=st.sampled_from([(5,), (2, 7), (1,)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_learned(check, dtype, max_positions, dim, shape, seed):
    rng = np.random.default_rng(seed)
    table = rounded(rng.standard_normal((max_positions, dim)), dtype)
    positions = rng.integers(0, max_positions, size=shape)
    positions.flat[0] = max_positions - 1  # the last row is valid
    check.exact(
        np.asarray(call("learned", table, positions), np.float64),
        table[positions].astype(np.float64),
        what="learned pe",
        case=dict(max_positions=max_positions, dim=dim, positions=positions.tolist()),
    )


@pytest.mark.clause("pe.learned")
def test_learned_rejects_positions_outside_the_table(check, dtype):
    table = rounded(np.ones((4, 2)), dtype)
    for bad in ([0, 4], [-1, 0]):
        check.rejects(
            functools.partial(call_unguarded, "learned", table, np.asarray(bad)),
            what=f"positions {bad} for a 4-row table",
            case=dict(max_positions=4, positions=bad),
        )


@st.composite
def rope_inputs(draw, rotary: bool = False):
    d = draw(head_dims().filter(lambda d: d % 2 == 0))
    rotary_dim = draw(st.sampled_from(sorted({2, d // 2 - (d // 2) % 2 or 2, d}))) if rotary else None
    n = draw(lengths())
    per_batch = draw(st.booleans())
    batch, heads = draw(st.integers(1, 2)), draw(st.sampled_from([1, 3]))
    offset = draw(st.sampled_from([0, 1, 4095, 32768]))
    seed = draw(st.integers(0, 2**32 - 1))
    return (
        SdpaCase(batch=batch, h_q=heads, h_kv=heads, n_q=n, n_k=n, d_qk=d, d_v=d, seed=seed),
        rotary_dim,
        offset,
        per_batch,
    )


def _check_rope(check, dtype, layout, inputs):
    case, rotary_dim, offset, per_batch = inputs
    x = case.inputs(dtype)[0]
    rng = np.random.default_rng(case.seed)
    shape = (case.batch, case.n_q) if per_batch else (case.n_q,)
    positions = offset + np.sort(rng.integers(0, 2 * case.n_q, size=shape), axis=-1)
    kwargs = dict(layout=layout, rotary_dim=rotary_dim)
    out = call("rope", x, positions, **kwargs)
    ref = rope.rope(x, positions, **kwargs)
    bound = positional_bound(
        ref,
        lambda a: rope.rope(x, positions, arithmetic=a, **kwargs),
        dtype,
        scale=finite_max(x, 1e-30),
        propagation=1.0 + float(positions.max()),
    )
    x64 = x.astype(np.float64)
    with conventions.diagnosis(
        "rope", lambda alt: alt.rope(x64, positions, **kwargs), conventions.close_to(out, bound.value)
    ):
        check.close(out, ref, bound, what="rope(x)", case=(case, kwargs, f"positions from {offset}"))


@pytest.mark.clause("rope.half_split")
@given(inputs=rope_inputs())
def test_rope_half_split(check, dtype, inputs):
    _check_rope(check, dtype, "half_split", inputs)


@pytest.mark.clause("rope.interleaved")
@given(inputs=rope_inputs())
def test_rope_interleaved(check, dtype, inputs):
    _check_rope(check, dtype, "interleaved", inputs)


@pytest.mark.clause("rope.partial")
@given(inputs=rope_inputs(rotary=True), layout=st.sampled_from(["half_split", "interleaved"]))
def test_rope_partial(check, dtype, inputs, layout):
    if not declares(f"rope.{layout}"):
        pytest.skip(f"unsupported: backend does not declare rope.{layout}")
    _check_rope(check, dtype, layout, inputs)


@pytest.mark.clause("rope.half_split")
@given(inputs=rope_inputs(), shift=st.integers(1, 5000))
def test_rope_scores_depend_on_position_differences(check, dtype, inputs, shift):
    """dot(rope(q, m + t), rope(k, n + t)) = dot(rope(q, m), rope(k, n)) for every shift t."""
    case, _, _, _ = inputs
    q, k, _, _ = case.inputs(dtype)
    k = k[:, :, ::-1].copy()  # keys differ from queries
    positions = np.arange(case.n_q)
    d = case.d_qk

    def scores_at(t):
        pair = [np.asarray(call("rope", x, positions + t, layout="half_split"), np.float64) for x in (q, k)]
        errors = [
            positional_bound(
                rope.rope(x, positions + t),
                lambda a, x=x: rope.rope(x, positions + t, arithmetic=a),
                dtype,
                scale=finite_max(x, 1e-30),
                propagation=1.0 + t + case.n_q,
            ).value
            for x in (q, k)
        ]
        return pair[0] @ np.swapaxes(pair[1], -1, -2), errors

    s0, (eq0, ek0) = scores_at(0)
    s1, (eq1, ek1) = scores_at(shift)
    qmax, kmax = finite_max(q), finite_max(k)
    allowed = d * (qmax * (ek0 + ek1) + kmax * (eq0 + eq1) + (eq0 * ek0 + eq1 * ek1))
    check.close(
        s1,
        s0,
        Bound(allowed, "each side's rope bound propagated through the dot product"),
        what=f"q.k with positions shifted by {shift}",
        case=case,
    )


@pytest.mark.clause("rope.half_split")
@given(inputs=rope_inputs())
def test_rope_makes_order_matter(check, dtype, inputs):
    """The converse of permutation invariance: with RoPE, swapping two keys changes their scores."""
    case, _, _, _ = inputs
    n = max(case.n_q, 2)
    case = case.with_(n_q=n, n_k=n, magnitude="unit")
    q, k, _, _ = case.inputs(dtype)
    positions = np.arange(n)
    swap = np.r_[n - 1, 1 : n - 1, 0] if n > 2 else np.array([1, 0])
    rot_q = np.asarray(call("rope", q, positions, layout="half_split"), np.float64)
    rot_k = np.asarray(call("rope", k, positions, layout="half_split"), np.float64)
    rot_swapped = np.asarray(call("rope", k[:, :, swap], positions, layout="half_split"), np.float64)
    scores = rot_q @ np.swapaxes(rot_k, -1, -2)
    swapped = rot_q @ np.swapaxes(rot_swapped, -1, -2)
    # without positions the swapped scores would be a column permutation of the original ones
    check.differs(
        swapped,
        scores[..., swap],
        more_than=1e-2 * finite_max(scores, 1.0),
        what="scores of keys moved to other positions",
        case=case,
    )


@pytest.mark.clause("alibi.slopes")
@given(num_heads=st.one_of(st.integers(1, 40), st.sampled_from([6, 12, 20, 24, 48, 64, 96, 100])))
@example(num_heads=12)
def test_alibi_slopes(check, dtype, num_heads):
    """The paper's recipe: non-powers of two interleave slopes of the next power of two."""
    out = call("alibi_slopes", num_heads)
    ref = alibi.alibi_slopes(num_heads)
    bound = rounding_bound(ref, dtype)
    with conventions.diagnosis(
        "alibi_slopes", lambda alt: alt.alibi_slopes(num_heads), conventions.close_to(out, bound.value)
    ):
        check.close(out, ref, bound, what="slopes", case=dict(num_heads=num_heads))


@pytest.mark.clause("alibi.bias")
@given(num_heads=st.integers(1, 6), n_q=lengths(), n_k=lengths(), form=st.sampled_from(["symmetric", "causal"]))
@example(num_heads=2, n_q=3, n_k=9, form="symmetric")
def test_alibi_bias(check, dtype, num_heads, n_q, n_k, form):
    slopes = rounded(alibi.alibi_slopes(num_heads), dtype)
    out = call("alibi_bias", slopes, n_q, n_k, form=form)
    ref = alibi.alibi_bias(slopes, n_q, n_k, form=form)
    check.close(
        out,
        ref,
        rounding_bound(ref, dtype),
        what="alibi bias",
        case=dict(num_heads=num_heads, n_q=n_q, n_k=n_k, form=form),
    )


# (18, 128) and (34, 27) are where float32 and float64 log bins differ (issue 14).
BUCKET_SETTINGS = [(32, 128), (16, 50), (8, 20), (64, 256), (128, 128), (6, 7), (18, 128), (34, 27)]


@pytest.mark.clause("t5.bucket")
@given(setting=st.sampled_from(BUCKET_SETTINGS), bidirectional=st.booleans(), span=st.sampled_from([8, 300, 5000]))
@example(setting=(18, 128), bidirectional=True, span=8)  # offset 8: float32 gives 14, float64 13
@example(setting=(34, 27), bidirectional=True, span=300)  # offset 18: float32 gives 30, float64 31
def test_t5_bucket(check, dtype, setting, bidirectional, span):
    num_buckets, max_distance = setting
    rel = np.arange(-span, span + 1)
    kwargs = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    out = call("t5_bucket", rel, **kwargs)
    with conventions.diagnosis("t5_bucket", lambda alt: alt.t5_bucket(rel, **kwargs), conventions.equal_to(out)):
        check.exact(np.asarray(out), relative.t5_bucket(rel, **kwargs), what="bucket", case=kwargs)


@pytest.mark.clause("t5.bias")
@given(
    setting=st.sampled_from(BUCKET_SETTINGS),
    bidirectional=st.booleans(),
    n_q=lengths(),
    n_k=lengths(),
    q_offset=st.sampled_from([0, 7, 1000]),
    heads=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_t5_bias(check, dtype, setting, bidirectional, n_q, n_k, q_offset, heads, seed):
    """bias[h, i, j] = table[bucket(k_j - q_i), h]: relative position is key minus query."""
    num_buckets, max_distance = setting
    table = rounded(np.random.default_rng(seed).standard_normal((num_buckets, heads)), dtype)
    q_pos, k_pos = np.arange(n_q) + q_offset, np.arange(n_k)
    kwargs = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    out = call("t5_bias", table, q_pos, k_pos, **kwargs)
    ref = relative.t5_bias(table, q_pos, k_pos, **kwargs)
    check.exact(
        np.asarray(out, np.float64), ref, what="t5 bias", case=dict(n_q=n_q, n_k=n_k, q_offset=q_offset, **kwargs)
    )


@pytest.mark.clause("shaw")
@given(case=sdpa_cases(gqa=False), max_relative=st.sampled_from([0, 1, 2, 4, 16, 200]))
@example(case=SdpaCase(n_q=3, n_k=7, d_qk=4, d_v=2), max_relative=2)
def test_shaw(check, dtype, case, max_relative):
    q, k, v, _ = case.inputs(dtype)
    rng = np.random.default_rng(case.seed + 7)
    rel_k = rounded(rng.standard_normal((2 * max_relative + 1, case.d_qk)), dtype)
    rel_v = rounded(rng.standard_normal((2 * max_relative + 1, case.d_v)), dtype)
    kwargs = dict(rel_k=rel_k, rel_v=rel_v, max_relative=max_relative)
    out = call("shaw", q, k, v, **kwargs)
    ref = relative.shaw(q, k, v, **kwargs)
    bound = shaw_bound(q, k, v, kwargs, dtype, ref)
    check.close(out, ref, bound, what="shaw out", case=(case, f"max_relative={max_relative}"))
