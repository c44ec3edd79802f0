"""Cases, strategies and tolerance bounds for the linear-attention and Performer conformance tests.

Bounds follow the tolerance policy (:mod:`attnspec.tolerance`): at 16 and 32 bits, ``NAIVE_FACTOR``
times the error of the reference's PARALLEL formula evaluated in the kernel's precision
(``naive_arithmetic``), plus a floor of two roundings of the case's scale and
``SENSITIVITY_FACTOR`` times the case's measured sensitivity to float32 rounding; at 64 bits a few
ulps times the error-propagation size.

Conditioning is judged per case, not by filtering inputs (they are standard normal). With
normalisation the feature map is non-negative, so the denominator is a sum of non-negative terms
and cannot cancel; the scale of the output is measured row by row as
``(sum_j |a_ij| |v_j| + |out_i| sum_j |a_ij|) / (den_i + eps)`` (about ``max |v|``, larger where a
carried state or ``eps`` weighs in). Without normalisation the identity map's numerator can
cancel; its scale is the sum of absolute contributions ``sum_j |a_ij| |v_j|``, the case's own
propagation size, not ``|out|``. The sensitivity term adds how far the exact result moves under
float32-sized perturbations of the features, values and state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
from hypothesis import strategies as st

from attnspec.conformance.calls import call_unguarded
from attnspec.conformance.dtypes import eps, rounded
from attnspec.conformance.strategies import block_sizes, declares, lengths
from attnspec.conformance.target import current
from attnspec.conformance.tolerance import Bound, finite_max, float64_bound, max_error, naive_arithmetic, relative_bound
from attnspec.contract import Unsupported
from attnspec.reference import linear, performer

UNIT32 = float(np.finfo(np.float32).eps)
DIMS = (1, 2, 3, 8, 16, 31, 32)
MAX_LEN = 129


@dataclass(frozen=True)
class LinearCase:
    """One ``linear_attention`` call: shapes, options, and how to fill the arrays."""

    batch: int = 1
    heads: int = 1
    n_q: int = 1
    n_k: int = 1
    d_qk: int = 8
    d_v: int = 8
    seed: int = 0
    feature_map: str = "elu+1"
    causal: bool = False
    normalize: bool = True
    scale: float = 1.0
    eps: float = 0.0
    initial_state: bool = False  # S0 of 5 earlier tokens
    initial_normalizer: bool = False  # z0 of the same 5 tokens; either may be given without the other
    dead: bool = False  # every third query row and the first key made <= 0: relu rows with den = 0

    def __repr__(self) -> str:
        """Valid Python that rebuilds the case: the shape always, other fields where not default."""
        defaults = LinearCase()
        shown = [f"{f.name}={getattr(self, f.name)!r}" for i, f in enumerate(fields(self))
                 if i < 7 or getattr(self, f.name) != getattr(defaults, f.name)]
        return f"LinearCase({', '.join(shown)})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))

    def with_(self, **changes) -> LinearCase:
        return replace(self, **changes)

    def options(self) -> dict:
        return dict(feature_map=self.feature_map, causal=self.causal, normalize=self.normalize,
                    scale=self.scale, eps=self.eps)

    def inputs(self, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """``(q, k, v, state)``: arrays in ``dtype``; ``state`` holds ``initial_state`` and/or
        ``initial_normalizer`` (float32 for 16-bit dtypes), those the case names."""
        rng = np.random.default_rng(self.seed)
        q = rng.standard_normal((self.batch, self.heads, self.n_q, self.d_qk))
        k = rng.standard_normal((self.batch, self.heads, self.n_k, self.d_qk))
        v = rng.standard_normal((self.batch, self.heads, self.n_k, self.d_v))
        if self.dead:
            q[:, :, ::3] = -np.abs(q[:, :, ::3])
            k[:, :, 0] = -np.abs(k[:, :, 0])
        state: dict = {}
        if self.initial_state or self.initial_normalizer:
            k_prev = linear.phi(rng.standard_normal((self.batch, self.heads, 5, self.d_qk)), self.feature_map)
            v_prev = rng.standard_normal((self.batch, self.heads, 5, self.d_v))
            state_dtype = dtype if dtype in ("float64", "float32") else "float32"
            if self.initial_state:
                state["initial_state"] = rounded(np.swapaxes(k_prev, -1, -2) @ v_prev, state_dtype)
            if self.initial_normalizer:
                state["initial_normalizer"] = rounded(k_prev.sum(axis=-2), state_dtype)
        return rounded(q, dtype), rounded(k, dtype), rounded(v, dtype), state


def dims() -> st.SearchStrategy[int]:
    return st.deferred(lambda: st.sampled_from([d for d in DIMS if d <= (current().backend.max_head_dim or d)]))


@st.composite
def linear_cases(draw, *, causal: bool | None = None, feature_maps=linear.FEATURE_MAPS, normalize: bool | None = None,
                 state: bool | None = None, dead: bool | None = None, max_len: int = MAX_LEN,
                 scales=(1.0, 1.0, 0.125, 3.0)) -> LinearCase:
    """A case with the named options; ``None`` draws them (``state``: only if the backend declares
    ``linear.state``; with a state, ``S0``, ``z0`` or both). ``identity`` is always unnormalised."""
    feature_map = draw(st.sampled_from(feature_maps))
    if state is None:
        state = declares("linear.state") and draw(st.booleans())
    causal = draw(st.booleans()) if causal is None else causal
    n_q = draw(lengths(max_len))
    n_k = n_q if causal else draw(lengths(max_len))
    d_qk = draw(dims())
    if normalize is None:
        normalize = draw(st.sampled_from([True, True, False]))
    normalize = normalize and feature_map in linear.NONNEGATIVE_MAPS
    # (S0, z0), z0 alone, and S0 alone where unnormalised (flash-linear-attention's use). Normalised,
    # an S0 without its z0 is not a carried sum: |out| reaches |f_q S0| / (den + eps), unbounded as
    # den -> 0 (relu rows, eps = 1e-6), and 16-bit dtypes cannot hold it.
    pairs = [(True, True), (False, True)] + ([] if normalize else [(True, False)])
    carried = draw(st.sampled_from(pairs)) if state else (False, False)
    return LinearCase(batch=draw(st.integers(1, 2)), heads=draw(st.sampled_from([1, 3])), n_q=n_q, n_k=n_k,
                      d_qk=d_qk, d_v=draw(st.one_of(st.just(d_qk), dims())), seed=draw(st.integers(0, 2**32 - 1)),
                      feature_map=feature_map, causal=causal, normalize=normalize,
                      scale=draw(st.sampled_from(scales)),
                      eps=draw(st.sampled_from([0.0, 0.0, 1e-6, 0.5])) if normalize else 0.0,
                      initial_state=carried[0], initial_normalizer=carried[1],
                      dead=feature_map == "relu" and (draw(st.booleans()) if dead is None else dead))


def forms(n: int) -> st.SearchStrategy[tuple[str, int | None]]:
    """``(form, chunk_size)``: the three forms, chunks of 1, of sizes that do not divide ``n``, and ``>= n``."""
    return st.one_of(st.sampled_from([("parallel", None), ("recurrent", None)]),
                     block_sizes(n).map(lambda c: ("chunked", c)))


def try_call(op: str, *args, **kwargs):
    """``backend.<op>`` as NumPy, or None where the backend declines this one call (``Unsupported``)."""
    backend = current().backend
    try:
        result = call_unguarded(op, *args, **kwargs)
    except Unsupported:
        return None
    return tuple(backend.to_numpy(r) for r in result) if isinstance(result, tuple) else backend.to_numpy(result)


# --- bounds -------------------------------------------------------------------------------------


def linear_bounds(q, k, v, state: dict, options: dict, dtype: str, ref) -> tuple[Bound, Bound, Bound]:
    """Bounds for ``(out, final state, final normalizer)``; ``ref`` is the reference's triple."""
    ref_out, ref_s, ref_z = ref
    s0, z0 = state.get("initial_state"), state.get("initial_normalizer")
    exact = linear.parts(q, k, v, **options, initial_state=s0, initial_normalizer=z0)
    fq = np.abs(linear.phi(q, options["feature_map"])) * options["scale"]
    fk = np.abs(linear.phi(k, options["feature_map"]))
    zero_s, zero_z = np.zeros_like(exact.state), np.zeros_like(exact.normalizer)
    mag = linear.parallel(fq, fk, np.abs(v), zero_s if s0 is None else np.abs(s0),
                          zero_z if z0 is None else np.abs(z0), causal=options["causal"])
    out_scale = _out_scale(mag, exact.den, ref_out, options)
    s_scale, z_scale = finite_max(mag.state, 1e-30), finite_max(mag.normalizer, 1e-30)
    n_k, d = k.shape[2], q.shape[3]
    if dtype == "float64":
        return (float64_bound(out_scale * 2 * (n_k + d + 3)), float64_bound(s_scale * (n_k + 2)),
                float64_bound(z_scale * (n_k + 2)))
    arith = naive_arithmetic(dtype)
    naive = linear.parts(q, k, v, **options, initial_state=s0, initial_normalizer=z0, arithmetic=arith)
    naive_out = arith.round(linear.finish(naive.num, naive.den, normalize=options["normalize"], eps=options["eps"]))
    sens = _linear_sensitivity(q, k, v, state, options, ref)
    return (relative_bound(max_error(naive_out, ref_out), out_scale, dtype, sens[0]),
            relative_bound(max_error(naive.state, ref_s), s_scale, dtype, sens[1]),
            relative_bound(max_error(naive.normalizer, ref_z), z_scale, dtype, sens[2]))


def _out_scale(mag, den, ref_out, options) -> float:
    if not options["normalize"]:
        return finite_max(mag.num, 1e-30)
    den = den + options["eps"]
    rows = den > 0
    spread = mag.num.max(axis=-1) + np.abs(ref_out).max(axis=-1) * mag.den
    return finite_max(spread[rows] / den[rows], 1e-30)


def _linear_sensitivity(q, k, v, state: dict, options, ref, draws: int = 2) -> tuple[float, float, float]:
    """How far the exact parallel result moves when float32 rounding perturbs its inputs: every
    query feature by a relative ``sqrt(F) eps``, key feature by ``eps``, value and carried state
    by ``sqrt(N_k) eps`` (``eps`` of float32; as ``rounding_sensitivity`` does for ``sdpa``)."""
    rng = np.random.default_rng(2019)
    fq = linear.phi(q, options["feature_map"]) * options["scale"]
    fk = linear.phi(k, options["feature_map"])
    v = np.asarray(v, np.float64)
    s0 = np.asarray(state.get("initial_state", np.zeros(fk.shape[:2] + fk.shape[-1:] + v.shape[-1:])), np.float64)
    z0 = np.asarray(state.get("initial_normalizer", np.zeros(fk.shape[:2] + fk.shape[-1:])), np.float64)
    grow = math.sqrt(k.shape[2])
    jitter = lambda x, size: x * (1 + size * UNIT32 * rng.uniform(-1, 1, x.shape))  # noqa: E731
    worst = [0.0, 0.0, 0.0]
    for _ in range(draws):
        p = linear.parallel(jitter(fq, math.sqrt(fq.shape[-1])), jitter(fk, 1.0), jitter(v, grow),
                            jitter(s0, grow), jitter(z0, grow), causal=options["causal"])
        out = linear.finish(p.num, p.den, normalize=options["normalize"], eps=options["eps"])
        for i, (got, want) in enumerate(zip((out, p.state, p.normalizer), ref, strict=True)):
            worst[i] = max(worst[i], max_error(got, want))
    return tuple(worst)


def efficient_bound(q, k, v, dtype: str, ref) -> Bound:
    """Bound for ``efficient_attention``: exponent arguments carry their own magnitude's rounding."""
    vmax = finite_max(v, 1e-30)
    qmax, kmax = finite_max(q), finite_max(k)
    if dtype == "float64":
        return float64_bound(vmax * (k.shape[2] + q.shape[3] + 2 * (qmax + kmax) + 10))
    naive = linear.efficient_attention(q, k, v, arithmetic=naive_arithmetic(dtype))
    rng = np.random.default_rng(2019)
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    sens = 0.0
    for _ in range(2):  # exp(x - max) rounds its argument relative to |x| + |max|
        pq = q64 + UNIT32 * rng.uniform(-1, 1, q.shape) * (np.abs(q64) + np.abs(q64).max(-1, keepdims=True))
        pk = k64 + UNIT32 * rng.uniform(-1, 1, k.shape) * (np.abs(k64) + np.abs(k64).max(-2, keepdims=True))
        pv = v64 * (1 + math.sqrt(k.shape[2]) * UNIT32 * rng.uniform(-1, 1, v.shape))
        sens = max(sens, max_error(linear.efficient_attention(pq, pk, pv), ref))
    return relative_bound(max_error(naive, ref), vmax, dtype, sens)


def _logit_size(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_d |x_d| |w_fd| + |x|^2 / 2``: the magnitude a logit's rounding error is relative to."""
    x = np.abs(np.asarray(x, np.float64))
    return x @ np.abs(np.asarray(w, np.float64)).T + (x * x).sum(axis=-1, keepdims=True) / 2


def features_bound(x, w, dtype: str, ref) -> Bound:
    """Bound for ``performer_features``: a logit error becomes a relative error of its feature."""
    size = _logit_size(x, w)
    d = x.shape[-1]
    if dtype == "float64":
        return float64_bound(finite_max(ref * (d * size + 2), 1e-30))
    naive = performer.performer_features(x, w, arithmetic=naive_arithmetic(dtype))
    sens = finite_max(ref * UNIT32 * (math.sqrt(d) * size + 1))
    return relative_bound(max_error(naive, ref), finite_max(ref, 1e-30), dtype, sens)


def orthogonal_bound(g, norms, dtype: str, ref) -> Bound:
    """Bound for ``orthogonal_projection``: the Q factor moves by ``cond(G_b)`` times the rounding."""
    g64, n64 = np.asarray(g, np.float64), np.asarray(norms, np.float64)
    scale = finite_max(ref, 1e-30)
    d = g.shape[-1]
    if dtype == "float64":
        return float64_bound(finite_max(n64, 1e-30) * d * float(np.linalg.cond(g64).max()))
    naive = rounded(_qr_float32(g64, n64), dtype).astype(np.float64)
    rng = np.random.default_rng(2019)
    sens = 0.0
    for _ in range(2):
        pg = g64 * (1 + math.sqrt(d) * UNIT32 * rng.uniform(-1, 1, g.shape))
        pn = n64 * (1 + UNIT32 * rng.uniform(-1, 1, norms.shape))
        sens = max(sens, max_error(performer.orthogonal_projection(pg, pn), ref))
    return relative_bound(max_error(naive, ref), scale, dtype, sens)


def _qr_float32(g: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """The construction with the QR computed in float32 (LAPACK ``sgeqrf``), as a float32 kernel would."""
    q, r = np.linalg.qr(g.astype(np.float32))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    rows = np.swapaxes(q, -1, -2).reshape(-1, g.shape[-1])[:norms.shape[0]]
    return (rows * norms.astype(np.float32)[:, None]).astype(np.float64)


def performer_bound(q, k, v, w, causal: bool, dtype: str, ref, scale: float | None = None) -> Bound:
    """Bound for ``performer``: logit errors relative to their size, then normalised linear attention."""
    d = q.shape[-1]
    root = math.sqrt(1 / math.sqrt(d) if scale is None else scale)
    q64, k64 = np.asarray(q, np.float64) * root, np.asarray(k, np.float64) * root
    size_q, size_k = _logit_size(q64, w), _logit_size(k64, w)
    vmax = finite_max(v, 1e-30)
    if dtype == "float64":
        return float64_bound(vmax * 2 * (d * (size_q.max() + size_k.max()) + w.shape[0] + k.shape[2] + 4))
    naive = performer.performer(q, k, v, projection=w, causal=causal, scale=scale, arithmetic=naive_arithmetic(dtype))
    w64 = np.asarray(w, np.float64)
    lq, lk = performer.logits(q64, w64, performer.EXACT), performer.logits(k64, w64, performer.EXACT)
    rng = np.random.default_rng(2019)
    sens = 0.0
    for _ in range(2):
        pq = lq + UNIT32 * (math.sqrt(d) * size_q + 1) * rng.uniform(-1, 1, lq.shape)
        pk = lk + UNIT32 * (math.sqrt(d) * size_k + 1) * rng.uniform(-1, 1, lk.shape)
        pv = np.asarray(v, np.float64) * (1 + math.sqrt(k.shape[2]) * UNIT32 * rng.uniform(-1, 1, v.shape))
        sens = max(sens, max_error(performer.attend_logits(pq, pk, pv, causal=causal), ref))
    return relative_bound(max_error(naive, ref), vmax, dtype, sens)


def gram_bound(norms, d: int, dtype: str) -> Bound:
    """How far ``W_b W_b^T`` of a correctly built, rounded block may be from ``diag(norms^2)``:
    Householder QR is orthogonal to ``O(D)`` roundings of its working precision, then the rows are
    rounded to the dtype (float32 work for 16-bit dtypes)."""
    work = "float64" if dtype == "float64" else "float32"
    value = (4 * eps(dtype) + 4 * (d + 2) * eps(work)) * finite_max(norms, 1e-30) ** 2
    return Bound(value, f"4 eps({dtype}) + 4 (D + 2) eps({work}), times max norm^2")
