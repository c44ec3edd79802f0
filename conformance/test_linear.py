"""Conformance of linear attention and Performer (spec section :mod:`attnspec.linear`)."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attnspec import reference
from attnspec.conformance.calls import call, call_unguarded
from attnspec.conformance.dtypes import eps, numpy_dtype, rounded
from attnspec.conformance.linear_cases import (LinearCase, dims, efficient_bound, features_bound, forms, gram_bound,
                                               linear_bounds, linear_cases, orthogonal_bound, performer_bound,
                                               try_call)
from attnspec.conformance.strategies import block_sizes
from attnspec.conformance.target import current, decline
from attnspec.contract import Unsupported
from attnspec.reference import linear, performer

POISON = 1e4


def check_linear(check, dtype, case: LinearCase, form: str, chunk_size=None, *, final_state: bool = False):
    """The backend's ``linear_attention`` on ``case`` in ``form`` against the reference."""
    __tracebackhide__ = True
    q, k, v, state = case.inputs(dtype)
    result = call("linear_attention", q, k, v, **case.options(), form=form, chunk_size=chunk_size, **state,
                  output_final_state=final_state or None)
    ref = linear.linear_attention(q, k, v, **case.options(), **state, output_final_state=True)
    bounds = linear_bounds(q, k, v, state, case.options(), dtype, ref)
    label = (case, dict(form=form, chunk_size=chunk_size))
    if not final_state:
        check.close(result, ref[0], bounds[0], what="out", case=label)
        return result, ref[0]
    if not (isinstance(result, tuple) and len(result) == 3):
        check._fail("output_final_state=True must return (out, state, normalizer)", label, f"got {type(result).__name__}")
    for got, want, bound, what in zip(result, ref, bounds, ("out", "final state", "final normalizer")):
        check.close(got, want, bound, what=what, case=label)
    return result[0], ref[0]


@pytest.mark.clause("linear.parallel")
@given(case=linear_cases())
@example(case=LinearCase(n_q=5, n_k=5, causal=True))
@example(case=LinearCase(n_q=3, n_k=17, d_qk=4, d_v=2, feature_map="identity", normalize=False))
def test_parallel(check, dtype, case):
    """The masked quadratic form, every feature map, causal or not, with and without a carried state."""
    check_linear(check, dtype, case, "parallel")


@pytest.mark.clause("linear.recurrent")
@given(case=linear_cases())
@example(case=LinearCase(n_q=4, n_k=4, causal=True))
@example(case=LinearCase(n_q=1, n_k=1, d_qk=1, d_v=1, causal=True))
def test_recurrent(check, dtype, case):
    """One state update per token gives the parallel form's result; each token sees itself."""
    check_linear(check, dtype, case, "recurrent")


@pytest.mark.clause("linear.chunked")
@given(case=linear_cases(), data=st.data())
@example(case=LinearCase(n_q=65, n_k=65, causal=True), data=None)
@example(case=LinearCase(n_q=3, n_k=65, feature_map="relu"), data=None)
def test_chunked(check, dtype, case, data):
    """Every chunk size, dividing N or not, C = 1 and C >= N included, gives the parallel form's result."""
    chunk = data.draw(st.one_of(block_sizes(case.n_k), st.integers(1, case.n_k + 1)), label="chunk_size") if data else 64
    check_linear(check, dtype, case, "chunked", chunk)


@pytest.mark.clause("linear.feature_map")
@given(case=linear_cases(), data=st.data())
@example(case=LinearCase(n_q=9, n_k=9, d_qk=3, d_v=2, feature_map="elu+1", normalize=False), data=None)
@example(case=LinearCase(n_q=9, n_k=9, d_qk=3, d_v=2, feature_map="relu", normalize=False), data=None)
@example(case=LinearCase(n_q=9, n_k=9, d_qk=3, d_v=2, feature_map="identity", normalize=False), data=None)
def test_feature_maps(check, dtype, case, data):
    """elu+1, relu and identity, each through whichever form the example draws."""
    form, chunk = data.draw(forms(case.n_k), label="form") if data else ("parallel", None)
    check_linear(check, dtype, case, form, chunk)


@pytest.mark.clause("linear.normalizer")
@given(case=linear_cases(feature_maps=("relu", "elu+1"), normalize=True), data=st.data())
@example(case=LinearCase(n_q=7, n_k=7, d_qk=2, d_v=3, feature_map="relu", causal=True, dead=True), data=None)
@example(case=LinearCase(n_q=6, n_k=2, d_qk=1, d_v=1, feature_map="relu", dead=True, eps=0.5), data=None)
def test_normalizer(check, dtype, case, data):
    """out = num / (den + eps); a row whose den + eps is 0 is exactly zero, never NaN."""
    form, chunk = data.draw(forms(case.n_k), label="form") if data else ("recurrent", None)
    out, _ = check_linear(check, dtype, case, form, chunk)
    q, k, v, state = case.inputs(dtype)
    parts = linear.parts(q, k, v, **case.options(), **state)
    zero = parts.den + case.eps == 0
    check.exact(np.asarray(out, np.float64)[zero], np.zeros((int(zero.sum()), case.d_v)),
                what="out of rows whose den + eps is 0", case=(case, dict(form=form, chunk_size=chunk)))


@pytest.mark.clause("linear.normalizer")
def test_signed_map_with_normalisation_is_an_error(check, dtype):
    """identity with normalize=True has a denominator of either sign: the spec makes it an error."""
    case = LinearCase(n_q=4, n_k=4, feature_map="identity")
    q, k, v, _ = case.inputs(dtype)
    check.rejects(lambda: call_unguarded("linear_attention", q, k, v, feature_map="identity", normalize=True),
                  what="feature_map='identity' with normalize=True", case=case)


def _poisoned_after(x: np.ndarray, t: int, dtype: str) -> np.ndarray:
    poisoned = x.copy()
    poisoned[:, :, t + 1:] = np.asarray(POISON, numpy_dtype(dtype))
    return poisoned


@pytest.mark.clause("linear.causal")
@given(case=linear_cases(causal=True, state=False), data=st.data())
@example(case=LinearCase(n_q=7, n_k=7, causal=True), data=None)
def test_future_keys_do_not_leak(check, dtype, case, data):
    """Keys and values after row t hold 1e4; rows 0..t stay as on clean inputs, in every form."""
    t = data.draw(st.integers(0, case.n_q - 1), label="t") if data else 2
    chunk = data.draw(block_sizes(case.n_k), label="chunk_size") if data else 4
    q, k, v, _ = case.inputs(dtype)
    ref = linear.linear_attention(q, k, v, **case.options(), output_final_state=True)
    bound = linear_bounds(q, k, v, {}, case.options(), dtype, ref)[0]
    k_bad, v_bad = _poisoned_after(k, t, dtype), _poisoned_after(v, t, dtype)
    ran = 0
    for form, c in (("parallel", None), ("recurrent", None), ("chunked", chunk)):
        out = try_call("linear_attention", q, k_bad, v_bad, **case.options(), form=form, chunk_size=c)
        if out is None:
            continue
        ran += 1
        check.close(np.asarray(out)[:, :, :t + 1], ref[0][:, :, :t + 1], bound, what=f"rows 0..{t} with keys after {t} poisoned",
                    case=(case, dict(form=form, chunk_size=c)))
    if not ran:
        decline("linear_attention: every form declined")


@pytest.mark.clause("linear.causal")
def test_causal_needs_equal_lengths(check, dtype):
    """Causal calls with N_q != N_k are errors: earlier tokens travel in the initial state."""
    case = LinearCase(n_q=3, n_k=5)
    q, k, v, _ = case.inputs(dtype)
    check.rejects(lambda: call_unguarded("linear_attention", q, k, v, causal=True), what="causal with N_q = 3, N_k = 5",
                  case=case)


@pytest.mark.clause("linear.state")
@given(case=linear_cases(state=True), data=st.data())
@example(case=LinearCase(n_q=4, n_k=4, causal=True, initial_state=True), data=None)
def test_initial_and_final_state(check, dtype, case, data):
    """The carried (S0, z0) enters every row; the final (S, z) sums every key, in every form."""
    form, chunk = data.draw(forms(case.n_k), label="form") if data else ("chunked", 3)
    check_linear(check, dtype, case, form, chunk, final_state=True)


@pytest.mark.clause("linear.state")
@given(case=linear_cases(causal=True, state=True), data=st.data())
@example(case=LinearCase(n_q=9, n_k=9, causal=True), data=None)
def test_pieces_equal_the_whole(check, dtype, case, data):
    """Tokens [0, t) then [t, N), the second call carrying the first's final state: the single call's rows."""
    case = case.with_(n_q=max(case.n_q, 2), n_k=max(case.n_k, 2))
    t = data.draw(st.integers(1, case.n_q - 1), label="t") if data else 4
    form, chunk = data.draw(forms(case.n_k), label="form") if data else ("recurrent", None)
    q, k, v, state = case.inputs(dtype)
    options = dict(**case.options(), form=form, chunk_size=chunk)
    first = call("linear_attention", q[:, :, :t], k[:, :, :t], v[:, :, :t], **options, **state, output_final_state=True)
    if not (isinstance(first, tuple) and len(first) == 3):
        check._fail("output_final_state=True must return (out, state, normalizer)", case, f"got {type(first).__name__}")
    second = call("linear_attention", q[:, :, t:], k[:, :, t:], v[:, :, t:], **options,
                  initial_state=first[1], initial_normalizer=first[2])
    ref = linear.linear_attention(q, k, v, **case.options(), **state, output_final_state=True)
    bound = linear_bounds(q, k, v, state, case.options(), dtype, ref)[0]
    both = np.concatenate([np.asarray(first[0], np.float64), np.asarray(second, np.float64)], axis=2)
    check.close(both, ref[0], bound, what=f"rows of [0, {t}) then [{t}, N) with the carried state",
                case=(case, dict(form=form, chunk_size=chunk, t=t)))


@pytest.mark.clause("linear.cost")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_memory_is_linear(check, dtype, form, causal):
    """Peak memory: x4 in N (256 -> 1024) and x4 in D = D_qk = D_v (16 -> 64) must each stay under x8."""
    backend = current().backend
    for axis, shapes in (("N", ((256, 16), (1024, 16))), ("D", ((1024, 16), (1024, 64)))):
        peaks = []
        for n, d in shapes:
            case = LinearCase(n_q=n, n_k=n, d_qk=d, d_v=d, causal=causal)
            native = [backend.to_native(a) for a in case.inputs(dtype)[:3]]
            options = dict(case.options(), form=form, **({"chunk_size": 64} if form == "chunked" else {}))
            try:
                if not peaks:  # a warm-up call first: one-time allocations (a BLAS workspace) are not the kernel's
                    backend.linear_attention(*native, **options)
                _, peak = backend.peak_memory(lambda: backend.linear_attention(*native, **options))
            except Unsupported as exc:
                decline(f"linear_attention: {exc}")
            if peak is None:
                decline("the backend has no peak-memory counter (Backend.peak_memory returned None)")
            peaks.append(peak)
        growth = peaks[1] / max(peaks[0], 1)
        if not growth < 8.0:
            check._fail(f"peak memory grows faster than linearly in {axis}", (case, options),
                        f"peak {peaks[0]} bytes at (N, D) = {shapes[0]}, {peaks[1]} at {shapes[1]}: x{growth:.1f} for x4 "
                        f"in {axis} (linear is x4; an N x N array or a state per token gives x16; the limit is x8)")


@pytest.mark.clause("linear.efficient")
@given(case=linear_cases(feature_maps=("elu+1",), causal=False, state=False), large=st.booleans())
@example(case=LinearCase(n_q=3, n_k=17, d_qk=5, d_v=2), large=True)
def test_efficient_attention(check, dtype, case, large):
    """Queries softmaxed over features, keys over the sequence; large inputs must not overflow."""
    q, k, v, _ = case.inputs(dtype)
    if large:
        q, k = rounded(np.asarray(q, np.float64) * 30, dtype), rounded(np.asarray(k, np.float64) * 30, dtype)
    out = call("efficient_attention", q, k, v)
    ref = linear.efficient_attention(q, k, v)
    check.close(out, ref, efficient_bound(q, k, v, dtype, ref), what="efficient attention out",
                case=(case, dict(large=large)))


@pytest.mark.clause("performer.features")
@given(d=dims(), m=st.sampled_from([1, 2, 7, 16, 64, 257]), shape=st.sampled_from([(1,), (5,), (2, 3, 4)]),
       seed=st.integers(0, 2**32 - 1))
@example(d=16, m=7, shape=(5,), seed=0)
def test_performer_features(check, dtype, d, m, shape, seed):
    """exp(W x - |x|^2 / 2) / sqrt(m), for x at the D^-1/4 scale Performer feeds it."""
    rng = np.random.default_rng(seed)
    x = rounded(rng.standard_normal(shape + (d,)) * d ** -0.25, dtype)
    w = rounded(rng.standard_normal((m, d)), dtype)
    out = call("performer_features", x, w)
    ref = performer.performer_features(x, w)
    check.close(out, ref, features_bound(x, w, dtype, ref), what="features", case=dict(d=d, m=m, shape=shape, seed=seed))


@pytest.mark.clause("performer.orthogonal")
@given(d=st.sampled_from([1, 2, 3, 8, 16, 31]), extra=st.sampled_from([-1, 0, 1, 5]), blocks=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
@example(d=4, extra=1, blocks=2, seed=0)
def test_orthogonal_projection(check, dtype, d, extra, blocks, seed):
    """Rows of one block are orthogonal with the given norms, and equal the sign-fixed QR construction."""
    m = max(1, (blocks - 1) * d + min(d, max(1, d + extra)))
    rng = np.random.default_rng(seed)
    g = rounded(rng.standard_normal((math.ceil(m / d), d, d)), dtype)
    norms = rounded(np.sqrt(rng.chisquare(d, size=m)), dtype)
    label = dict(d=d, m=m, seed=seed)
    w = np.asarray(call("orthogonal_projection", g, norms), np.float64)
    check.same_shape(w, np.zeros((m, d)), what="projection", case=label)
    n64 = np.asarray(norms, np.float64)
    for b in range(g.shape[0]):
        rows = slice(b * d, min((b + 1) * d, m))
        gram = w[rows] @ w[rows].T
        check.close(gram, np.diag(n64[rows] ** 2), gram_bound(n64, d, dtype), what=f"W W^T of block {b}", case=label)
    ref = performer.orthogonal_projection(g, norms)
    check.close(w, ref, orthogonal_bound(g, norms, dtype, ref), what="projection", case=label)


def _performer_inputs(case: LinearCase, m: int, dtype: str):
    q, k, v, _ = case.inputs(dtype)
    w = rounded(np.random.default_rng(case.seed + 1).standard_normal((m, case.d_qk)), dtype)
    return q, k, v, w


@pytest.mark.clause("performer")
@given(case=linear_cases(feature_maps=("elu+1",), state=False), m=st.sampled_from([1, 3, 16, 64]))
@example(case=LinearCase(n_q=5, n_k=5, d_qk=16, causal=True), m=16)
def test_performer(check, dtype, case, m):
    """Normalised linear attention with FAVOR+ features of q D^-1/4 and k D^-1/4, for the given W."""
    q, k, v, w = _performer_inputs(case, m, dtype)
    out = call("performer", q, k, v, projection=w, causal=case.causal)
    ref = performer.performer(q, k, v, projection=w, causal=case.causal)
    check.close(out, ref, performer_bound(q, k, v, w, case.causal, dtype, ref), what="performer out",
                case=(case, dict(m=m)))


@pytest.mark.clause("performer")
@given(case=linear_cases(feature_maps=("elu+1",), causal=True, state=False), m=st.sampled_from([4, 16]), data=st.data())
@example(case=LinearCase(n_q=6, n_k=6, d_qk=16, causal=True), m=16, data=None)
def test_performer_future_keys_do_not_leak(check, dtype, case, m, data):
    """Causal FAVOR+: keys after row t hold 1e4, and rows 0..t do not change (nor underflow)."""
    t = data.draw(st.integers(0, case.n_q - 1), label="t") if data else 2
    q, k, v, w = _performer_inputs(case, m, dtype)
    out = call("performer", q, _poisoned_after(k, t, dtype), _poisoned_after(v, t, dtype), projection=w, causal=True)
    ref = performer.performer(q, k, v, projection=w, causal=True)
    check.close(np.asarray(out)[:, :, :t + 1], ref[:, :, :t + 1], performer_bound(q, k, v, w, True, dtype, ref),
                what=f"rows 0..{t} with keys after {t} poisoned", case=(case, dict(m=m, t=t)))


# --- performer.estimator: statistical checks with fixed seeds -------------------------------------------

#: z-score limit of the unbiasedness check, with sigma estimated from the samples. A normal tail
#: beyond 4.5 has probability 6.8e-6 per pair; the sample mean of these skewed estimates has a
#: heavier tail: with the reference, 3 of 20000 random seeds exceeded 4.5 on one of the 6 pairs, so
#: a correct backend fails for a random seed with probability about 1.5e-4. The seed is fixed, so
#: the check is deterministic, and a correct backend passes it at this seed.
Z_LIMIT = 4.5
FALSE_FAILURE = "about 1.5e-4"
ESTIMATOR_SEED = 20210301
#: (cosine, |x|, |y|) after the D^-1/4 scaling: kernel values exp(x.y) from 0.44 to 1.28, and
#: |x + y|^2 <= 1, so a single feature's relative variance exp(|x + y|^2) - 1 stays below 1.8 and
#: the sample mean of 400 estimates is close to normal.
PAIRS = ((1.0, 0.5, 0.5), (0.5, 0.6, 0.5), (0.0, 0.7, 0.7), (-0.5, 0.8, 0.8), (-0.9, 1.0, 0.9), (0.8, 0.4, 0.3))


@pytest.mark.clause("performer.estimator")
def test_feature_products_are_unbiased(check, dtype):
    """The mean over 400 independent 16-row projections of phi(x).phi(y) is within 4.5 sigma/sqrt(n) of exp(x.y)."""
    d, m, n = 16, 16, 400
    rng = np.random.default_rng(ESTIMATOR_SEED)
    xs, ys = [], []
    for cosine, nx, ny in PAIRS:
        u, r = np.linalg.qr(rng.standard_normal((d, 2)))
        u = u * np.sign(np.diag(r))
        xs.append(nx * u[:, 0])
        ys.append(ny * (cosine * u[:, 0] + math.sqrt(1 - cosine ** 2) * u[:, 1]))
    points = rounded(np.array(xs + ys), dtype)
    p64 = np.asarray(points, np.float64)
    exact = np.exp((p64[:len(PAIRS)] * p64[len(PAIRS):]).sum(axis=-1))
    samples = np.empty((n, len(PAIRS)))
    for s in range(n):
        f = np.asarray(call("performer_features", points, rounded(rng.standard_normal((m, d)), dtype)), np.float64)
        samples[s] = (f[:len(PAIRS)] * f[len(PAIRS):]).sum(axis=-1)
    mean, sigma = samples.mean(axis=0), samples.std(axis=0, ddof=1)
    rounding = 4 * (m + d) * eps(dtype) * exact  # features rounded to the dtype: a few ulps per term
    z = np.abs(mean - exact) / (sigma / math.sqrt(n) + rounding)
    if not (z <= Z_LIMIT).all():
        worst = int(np.argmax(z))
        check._fail("the mean feature product is not exp(x.y): the estimator is biased", dict(pairs=PAIRS, seed=ESTIMATOR_SEED),
                    f"pair {PAIRS[worst]} (cosine, |x|, |y|): mean of {n} estimates {mean[worst]:.5g}, exp(x.y) = "
                    f"{exact[worst]:.5g}, {z[worst]:.1f} standard errors away (limit {Z_LIMIT}; a correct backend "
                    f"exceeds it with probability {FALSE_FAILURE} over random seeds)")


#: Feature counts, and what the error may do between m = 16 and m = 1024: the fitted exponent of
#: mean |performer - sdpa| against m must lie in [-0.8, -0.25] (the theory gives -0.5 for large m)
#: and every x4 in m must lower the error. With the reference over 1000 random seeds per variant
#: the exponent was -0.41 +- 0.02 (extremes -0.47 and -0.33) and the check never failed: the
#: false-failure probability is below 3e-3 (95% upper bound), and about 1e-9 by a normal fit.
#: A kernel that ignores projection rows has an exponent near 0.
FEATURE_COUNTS = (16, 64, 256, 1024)
SLOPE_RANGE = (-0.8, -0.25)


@pytest.mark.clause("performer.estimator")
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_error_falls_like_inverse_sqrt_m(check, dtype, causal):
    """mean |performer - sdpa| over 6 projections per m falls with m at about m^-1/2."""
    case = LinearCase(batch=1, heads=2, n_q=32, n_k=32, d_qk=16, d_v=16, seed=ESTIMATOR_SEED, causal=causal)
    q, k, v, _ = case.inputs(dtype)
    # |q'|^2 = |k'|^2 = 1 on average after the D^-1/4 scaling: there the estimator's variance is
    # moderate and m = 16 .. 1024 is already in the m^-1/2 regime (at unit inputs it is not yet).
    q, k = (rounded(np.asarray(x, np.float64) / 2, dtype) for x in (q, k))
    exact = reference.sdpa(q, k, v, causal="top_left" if causal else None)
    rng = np.random.default_rng(ESTIMATOR_SEED)
    errors = []
    for m in FEATURE_COUNTS:
        runs = [call("performer", q, k, v, projection=rounded(rng.standard_normal((m, case.d_qk)), dtype), causal=causal)
                for _ in range(6)]
        errors.append(float(np.mean([np.abs(np.asarray(r, np.float64) - exact).mean() for r in runs])))
    slope = float(np.polyfit(np.log(FEATURE_COUNTS), np.log(errors), 1)[0])
    falling = all(b < a for a, b in zip(errors, errors[1:]))
    if not (falling and SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]):
        check._fail("the error against softmax attention does not fall like m^-1/2", case,
                    f"mean |out - sdpa| at m = {FEATURE_COUNTS}: {', '.join(f'{e:.3g}' for e in errors)}; fitted exponent "
                    f"{slope:.2f} (allowed {SLOPE_RANGE}, theory -0.5), strictly falling: {falling}")

