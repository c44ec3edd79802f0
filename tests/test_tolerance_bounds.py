"""The tolerance bounds' values for a fixed set of cases, pinned (the tolerance engine's before/after).

Every bound function of the suite (every family, every dtype) is evaluated on fixed cases and
compared with ``tests/data/tolerance_bounds.json``, which this module writes from the code that was
current when it was pinned (``python tests/test_tolerance_bounds.py``): the numbers come from the
code, not from a hand. A refactor of the tolerance engine must reproduce them.

Equality: on the machine that wrote the fixture the values are reproduced bit for bit (run this
file with ``--check`` to see the largest difference in ulps). The test allows a relative 1e-9,
because the bounds are computed with BLAS matrix products and NumPy's SIMD ``exp``, whose last
bits differ between CPUs; a change of formula, of a perturbation or of its random draws moves a
bound by far more (1e-6 relative and up).
"""

from __future__ import annotations

import json
import math
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from attnspec import reference
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.dtypes import rounded

FIXTURE = Path(__file__).parent / "data" / "tolerance_bounds.json"
DTYPES = ("float16", "bfloat16", "float32", "float64")
RELATIVE = 1e-9

SDPA_CASES = {
    "gqa-bottom-right": SdpaCase(h_q=4, h_kv=2, n_q=5, n_k=9, d_qk=8, d_v=4, seed=1, causal="bottom_right"),
    "mask-bias-softcap": SdpaCase(n_q=7, n_k=7, seed=2, mask="full", bias="per_head", softcap=20.0),
    "alibi-window-lens": SdpaCase(
        batch=2, n_q=6, n_k=11, seed=3, alibi=True, window=(2, 1), kv_lens=(11, 4), scale=0.3
    ),
    "large": SdpaCase(n_q=4, n_k=4, seed=4, magnitude="large"),
    "neg-inf-bias-q-lens": SdpaCase(batch=2, n_q=5, n_k=6, seed=5, bias="full", bias_neg_inf=True, q_lens=(5, 2)),
}


def _values(bounds) -> list[float]:
    return [float(b.value) for b in (bounds if isinstance(bounds, tuple) else (bounds,))]


def _sdpa(dtype: str) -> dict:
    from attnspec.conformance.tolerance import sdpa_bounds

    out = {}
    for name, case in SDPA_CASES.items():
        q, k, v, options = case.inputs(dtype)
        ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, **options)
        out[f"sdpa/{name}"] = _values(sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse))
    return out


def _mha(dtype: str) -> dict:
    from attnspec.conformance.test_multihead import mha_inputs
    from attnspec.conformance.tolerance import mha_bound

    out = {}
    for name, case, d_model, self_attention, options in (
        ("self", SdpaCase(h_q=4, h_kv=2, n_q=5, n_k=5, d_qk=8, d_v=4), 8, True, {}),
        (
            "cross-causal",
            SdpaCase(h_q=2, h_kv=1, n_q=3, n_k=7, d_qk=4, d_v=6, seed=3),
            24,
            False,
            {"causal": "bottom_right"},
        ),
    ):
        x_q, x_kv, weights = mha_inputs(case, dtype, d_model, self_attention)
        ref = reference.mha(x_q, x_kv, **weights, **options)
        out[f"mha/{name}"] = _values(mha_bound(x_q, x_kv, weights, options, dtype, ref))
    return out


def _positional(dtype: str) -> dict:
    from attnspec.conformance.tolerance import finite_max, positional_bound, rounding_bound, shaw_bound
    from attnspec.reference import absolute, alibi, relative, rope

    out = {}
    for layout in ("interleaved", "concat"):
        pos = np.asarray([0, 3, 17, 70000, 5], dtype=np.int64)
        encode = partial(absolute.sinusoidal, pos, 10, layout=layout, base=10000.0)
        bound = positional_bound(
            encode(),
            lambda a, encode=encode: encode(arithmetic=a),
            dtype,
            scale=1.0,
            propagation=1.0 + float(pos.max()),
        )
        out[f"sinusoidal/{layout}"] = _values(bound)
    for layout in ("interleaved", "half_split"):
        x = SdpaCase(batch=2, n_q=6, d_qk=8, seed=6).inputs(dtype)[0]
        positions = 40 + np.arange(6)
        kwargs = dict(layout=layout, rotary_dim=6 if layout == "interleaved" else None)
        rotate = partial(rope.rope, x, positions, **kwargs)
        bound = positional_bound(
            rotate(),
            lambda a, rotate=rotate: rotate(arithmetic=a),
            dtype,
            scale=finite_max(x, 1e-30),
            propagation=1.0 + float(positions.max()),
        )
        out[f"rope/{layout}"] = _values(bound)
    out["alibi/slopes"] = _values(rounding_bound(alibi.alibi_slopes(12), dtype))
    slopes = rounded(alibi.alibi_slopes(3), dtype)
    out["alibi/bias"] = _values(rounding_bound(alibi.alibi_bias(slopes, 4, 9, form="symmetric"), dtype))
    for max_relative, case in (
        (2, SdpaCase(n_q=3, n_k=7, d_qk=4, d_v=2)),
        (200, SdpaCase(batch=2, n_q=5, n_k=5, seed=9)),
    ):
        q, k, v, _ = case.inputs(dtype)
        rng = np.random.default_rng(case.seed + 7)
        rel_k = rounded(rng.standard_normal((2 * max_relative + 1, case.d_qk)), dtype)
        rel_v = rounded(rng.standard_normal((2 * max_relative + 1, case.d_v)), dtype)
        kwargs = dict(rel_k=rel_k, rel_v=rel_v, max_relative=max_relative)
        ref = relative.shaw(q, k, v, **kwargs)
        out[f"shaw/{max_relative}"] = _values(shaw_bound(q, k, v, kwargs, dtype, ref))
    return out


LINEAR_CASES = {
    "default": dict(n_q=5, n_k=9, seed=1),
    "causal": dict(heads=3, n_q=17, n_k=17, d_qk=3, d_v=5, seed=2, causal=True, scale=0.125),
    "relu-dead-eps": dict(batch=2, n_q=7, n_k=12, seed=3, feature_map="relu", dead=True, eps=1e-6),
    "identity-state": dict(n_q=4, n_k=6, seed=4, feature_map="identity", normalize=False, initial_state=True),
    "state-normalizer": dict(
        n_q=6, n_k=6, seed=5, causal=True, eps=0.5, initial_state=True, initial_normalizer=True, scale=3.0
    ),
}


def _linear(dtype: str) -> dict:
    from attnspec.conformance.bounds import efficient_bound, linear_bounds, orthogonal_bound, performer_bound
    from attnspec.conformance.hand_bounds import features_bound, gram_bound
    from attnspec.conformance.linear_cases import LinearCase
    from attnspec.conformance.test_linear import _performer_inputs
    from attnspec.reference import linear, performer

    out = {}
    for name, fields in LINEAR_CASES.items():
        case = LinearCase(**fields)
        q, k, v, state = case.inputs(dtype)
        ref = linear.linear_attention(q, k, v, **case.options(), **state, output_final_state=True)
        out[f"linear/{name}"] = _values(linear_bounds(q, k, v, state, case.options(), dtype, ref))
    for large in (False, True):
        q, k, v, _ = LinearCase(n_q=3, n_k=17, d_qk=5, d_v=2).inputs(dtype)
        if large:
            q, k = rounded(np.asarray(q, np.float64) * 30, dtype), rounded(np.asarray(k, np.float64) * 30, dtype)
        ref = linear.efficient_attention(q, k, v)
        out[f"efficient/{'large' if large else 'unit'}"] = _values(efficient_bound(q, k, v, dtype, ref))
    for d, m, shape, seed in ((16, 7, (5,), 0), (3, 257, (2, 3, 4), 1)):
        rng = np.random.default_rng(seed)
        x = rounded(rng.standard_normal(shape + (d,)) * d**-0.25, dtype)
        w = rounded(rng.standard_normal((m, d)), dtype)
        out[f"features/{d}-{m}"] = _values(features_bound(x, w, dtype, performer.performer_features(x, w)))
    for d, extra, blocks, seed in ((4, 1, 2, 0), (8, -1, 3, 1)):
        m = max(1, (blocks - 1) * d + min(d, max(1, d + extra)))
        rng = np.random.default_rng(seed)
        g = rounded(rng.standard_normal((math.ceil(m / d), d, d)), dtype)
        norms = rounded(np.sqrt(rng.chisquare(d, size=m)), dtype)
        ref = performer.orthogonal_projection(g, norms)
        out[f"orthogonal/{d}-{m}"] = _values(orthogonal_bound(g, norms, dtype, ref))
        out[f"gram/{d}-{m}"] = _values(gram_bound(np.asarray(norms, np.float64), d, dtype))
    for name, fields, m, scale, far_key in (
        ("causal", dict(n_q=5, n_k=5, d_qk=16, causal=True), 16, None, False),
        ("scale", dict(n_q=6, n_k=6, d_qk=16, causal=True), 257, 0.3, False),
        ("far-key", dict(n_q=6, n_k=6, d_qk=16, causal=True), 16, None, True),
        ("noncausal", dict(n_q=4, n_k=9, d_qk=8, seed=3), 64, 0.05, False),
    ):
        case = LinearCase(**fields)
        q, k, v, w = _performer_inputs(case, m, dtype, scale, far_key)
        ref = performer.performer(q, k, v, projection=w, causal=case.causal, scale=scale)
        out[f"performer/{name}"] = _values(performer_bound(q, k, v, w, case.causal, dtype, ref, scale))
    return out


RETENTION_CASES = {
    "parallel": dict(heads=2, n=9, gammas=(0.9, 0.5), seed=1),
    "recurrent-state": dict(
        batch=2, n=7, d_k=3, d_v=5, gammas=(1 - 2.0**-9,), form="recurrent", scale=0.3, initial_state=True, seed=2
    ),
    "chunkwise": dict(heads=3, n=13, gammas=(0.0, 1e-3, 1.0), form="chunkwise", chunk_size=5, scale=1.7, seed=3),
}


def _retention(dtype: str) -> dict:
    from attnspec.conformance.bounds import retention_bounds
    from attnspec.conformance.retention_cases import RetentionCase
    from attnspec.reference.retention import retention

    out = {}
    for name, fields in RETENTION_CASES.items():
        q, k, v, kwargs = RetentionCase(**fields).inputs(dtype)
        ref_out, ref_state = retention(q, k, v, **kwargs, return_state=True)
        out[f"retention/{name}"] = _values(retention_bounds(q, k, v, kwargs, dtype, ref_out, ref_state))
    return out


def _hierarchical(dtype: str) -> dict:
    from attnspec.conformance import hierarchical_cases as hc
    from attnspec.conformance.bounds import routed_bounds
    from attnspec.conformance.hand_bounds import lsh_bound, nsa_bound, selection_margin
    from attnspec.reference.lsh import LSH
    from attnspec.reference.nsa import NSA
    from attnspec.reference.routed import routed

    out = {}
    for name, case in (
        ("gqa", hc.NsaCase(h_q=4, h_kv=2, n_q=24, n_k=24, sel_len=8, top_n=2, window=5, init_blocks=1, local_blocks=1)),
        ("weights", hc.NsaCase(batch=2, h_q=3, h_kv=1, n_q=1, n_k=33, top_n=3, window=8, compress="weights")),
        ("linear", hc.NsaCase(n_q=12, n_k=17, seed=3, compress="linear", scale=0.3)),
    ):
        q, k, v, kwargs = case.inputs(dtype)
        problem = NSA.build(q, k, v, **kwargs)
        out[f"nsa/{name}"] = _values(nsa_bound(problem, dtype)) + [float(np.abs(q).sum())]
        select = NSA.build(q, k, **hc.select_call(kwargs))
        out[f"nsa-margin/{name}"] = [selection_margin(select, select.importance(), dtype)]
    for name, case in (
        ("default", hc.RoutedCase()),
        ("split-causal", hc.RoutedCase(h_q=2, n_q=9, n_k=12, seed=2, split=True, causal="top_left")),
        ("ties", hc.RoutedCase(h_q=3, h_kv=1, seed=4, ties=True, clusters=5, scale=0.3)),
    ):
        q, k, v, kwargs = case.inputs(dtype)
        ref_out, ref_lse = routed(q, k, v, **kwargs)
        out[f"routed/{name}"] = _values(routed_bounds(q, k, v, kwargs, dtype, ref_out, ref_lse))
        out[f"routed-margin/{name}"] = [hc._routing_gaps(q, kwargs["centroids"], dtype)[1], float(np.abs(q).sum())]
    for name, case in (
        ("default", hc.LshCase()),
        ("causal", hc.LshCase(batch=2, n=12, n_rounds=3, n_buckets=6, chunk_len=3, causal=True, seed=2, scale=0.5)),
        ("one-bucket", hc.LshCase(n=8, one_bucket=True, seed=3)),
    ):
        qk, v, kwargs = case.inputs(dtype)
        out[f"lsh/{name}"] = _values(lsh_bound(LSH.build(qk, v, **kwargs), dtype)) + [float(np.abs(qk).sum())]
    return out


def _linformer(dtype: str) -> dict:
    from attnspec.conformance.bounds import linformer_bound
    from attnspec.conformance.test_lowrank import projections
    from attnspec.reference import lowrank

    out = {}
    for name, case, k_proj, per_head in (
        ("per-head", SdpaCase(h_q=4, h_kv=2, n_q=9, n_k=33, d_qk=8, d_v=4, seed=1), 7, True),
        ("shared", SdpaCase(n_q=5, n_k=12, seed=2, scale=0.3), 16, False),
    ):
        q, k, v, options = case.inputs(dtype)
        e, f = projections(case, dtype, k_proj, per_head)
        ref = lowrank.linformer(q, k, v, e=e, f=f, **options)
        out[f"linformer/{name}"] = _values(linformer_bound(q, k, v, dict(e=e, f=f, **options), dtype, ref))
    return out


FAMILIES = (_sdpa, _mha, _positional, _linear, _retention, _hierarchical, _linformer)


def bound_values(family, dtype: str) -> dict[str, list[float]]:
    return {f"{name}/{dtype}": values for name, values in family(dtype).items()}


def all_values() -> dict[str, list[float]]:
    values: dict = {}
    for family in FAMILIES:
        for dtype in DTYPES:
            values.update(bound_values(family, dtype))
    return values


def _ulps(a: float, b: float) -> float:
    return abs(a - b) / max(np.spacing(abs(b)), np.finfo(np.float64).tiny)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__.strip("_"))
def test_bounds_keep_their_pinned_values(family, dtype):
    pinned = json.loads(FIXTURE.read_text())
    got = bound_values(family, dtype)
    for name, values in got.items():
        assert name in pinned, f"{name} is not pinned: run python {__file__}"
        assert values == pytest.approx(pinned[name], rel=RELATIVE, abs=0.0), name


def test_every_family_and_dtype_is_pinned():
    pinned = json.loads(FIXTURE.read_text())
    for dtype in DTYPES:
        assert any(k.startswith("sdpa/") and k.endswith(dtype) for k in pinned)
    assert len(pinned) == sum(len(bound_values(f, "float32")) for f in FAMILIES) * len(DTYPES)


if __name__ == "__main__":
    if "--check" in sys.argv:
        pinned, worst = json.loads(FIXTURE.read_text()), 0.0
        for name, values in all_values().items():
            if len(values) != len(pinned[name]):
                worst = math.inf
                continue
            worst = max([worst, *(_ulps(a, b) for a, b in zip(values, pinned[name], strict=True))])
        print(f"largest difference from the pinned values: {worst:g} ulps")
    else:
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(all_values(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {FIXTURE}")
