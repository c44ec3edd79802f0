"""The retention reference: bad input names the argument; the forms agree with each other and with
formulas written out independently here, in float64 to ~1e-12."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from attnspec.reference.retention import decay_powers, retention, retention_decays

rng = np.random.default_rng(0)
Q, K = rng.standard_normal((2, 2, 3, 19, 8))
V = rng.standard_normal((2, 3, 19, 5))
G = np.array([0.0, 0.9, 1.0])
S0 = rng.standard_normal((2, 3, 8, 5))


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0.0))))


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (
            (Q, K, V),
            {"gammas": np.array([0.5, 1.1, 0.9])},
            ValueError,
            r"gammas must lie in \[0, 1\]; got gammas\[1\] = 1.1",
        ),
        (
            (Q, K, V),
            {"gammas": np.array([-0.1, 0.5, 0.9])},
            ValueError,
            r"gammas must lie in \[0, 1\]; got gammas\[0\]",
        ),
        (
            (Q, K, V),
            {"gammas": np.array([0.5, np.nan, 0.9])},
            ValueError,
            r"gammas must lie in \[0, 1\]; got gammas\[1\] = nan",
        ),
        ((Q, K, V), {"gammas": np.array([0.5, 0.9])}, ValueError, r"gammas must have shape \(H,\) = \(3,\)"),
        ((Q, K, V), {"gammas": np.array([1, 1, 1])}, TypeError, "gammas must be a real floating-point array"),
        (
            (Q, K, V),
            {"gammas": G.astype(np.float16)},
            TypeError,
            "gammas must be a float32 or float64 array .* got dtype float16",
        ),
        ((Q, K, V), {"gammas": G.astype(ml_dtypes.bfloat16)}, TypeError, "gammas must be a float32 or float64 array"),
        ((Q, K, V), {"gammas": G, "form": "chunkwise"}, ValueError, "chunk_size is required for form='chunkwise'"),
        ((Q, K, V), {"gammas": G, "form": "chunkwise", "chunk_size": 0}, ValueError, "chunk_size must be >= 1; got 0"),
        ((Q, K, V), {"gammas": G, "form": "chunkwise", "chunk_size": 2.0}, TypeError, "chunk_size must be an integer"),
        ((Q, K, V), {"gammas": G, "chunk_size": 4}, ValueError, "chunk_size is only for form='chunkwise'"),
        ((Q, K, V), {"gammas": G, "form": "fused"}, ValueError, "form must be one of"),
        ((Q, K, V), {"gammas": G, "scale": float("nan")}, ValueError, "scale must be finite"),
        ((Q, K, V), {"gammas": G, "return_state": 1}, TypeError, "return_state must be a bool"),
        (
            (Q, K, V),
            {"gammas": G, "initial_state": S0[:, :, :4]},
            ValueError,
            r"initial_state must have shape \(B, H, D_k, D_v\) = \(2, 3, 8, 5\)",
        ),
        ((Q, K[..., :7], V), {"gammas": G}, ValueError, r"k must have q's shape \(B, H, N, D_k\)"),
        ((Q, K, V[:, :, :4]), {"gammas": G}, ValueError, r"v must have shape \(B, H, N, D_v\)"),
        ((Q.astype(int), K, V), {"gammas": G}, TypeError, "q must be a real floating-point array"),
    ],
)
def test_retention_rejects(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        retention(*args, **kwargs)


@pytest.mark.parametrize("num_heads, error", [(0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_retention_decays_rejects(num_heads, error):
    with pytest.raises(error, match="num_heads"):
        retention_decays(num_heads)


def explicit(q, k, v, gammas, scale, s0):
    """The parallel form written element by element: a double loop over positions."""
    b, h, n, _ = q.shape
    out = np.zeros(v.shape)
    for hh in range(h):
        g = gammas[hh]
        for i in range(n):
            out[:, hh, i] = scale * g ** (i + 1) * np.einsum("bd,bde->be", q[:, hh, i], s0[:, hh])
            for j in range(i + 1):
                dots = scale * np.einsum("bd,bd->b", q[:, hh, i], k[:, hh, j])
                out[:, hh, i] += (g ** (i - j)) * dots[:, None] * v[:, hh, j]
    state = np.stack(
        [
            gammas[hh] ** n * s0[:, hh]
            + sum(gammas[hh] ** (n - 1 - m) * np.einsum("bd,be->bde", k[:, hh, m], v[:, hh, m]) for m in range(n))
            for hh in range(h)
        ],
        axis=1,
    )
    return out, state


def test_parallel_form_equals_the_written_out_formula():
    out, state = retention(Q, K, V, gammas=G, scale=0.7, initial_state=S0, return_state=True)
    ref_out, ref_state = explicit(Q, K, V, G, 0.7, S0)  # Python's 0.0 ** 0 == 1 matches g^0 = 1
    close(out, ref_out)
    close(state, ref_state)


@pytest.mark.parametrize(
    "form, chunk_size", [("recurrent", None)] + [("chunkwise", c) for c in (1, 2, 4, 5, 18, 19, 40)]
)
def test_forms_agree(form, chunk_size):
    ref_out, ref_state = retention(Q, K, V, gammas=G, initial_state=S0, return_state=True)
    out, state = retention(Q, K, V, gammas=G, form=form, chunk_size=chunk_size, initial_state=S0, return_state=True)
    close(out, ref_out)
    close(state, ref_state)


def test_gamma_edges_and_default_scale():
    out = retention(Q, K, V, gammas=np.array([1.0, 1.0, 1.0]))
    causal_linear = np.tril(Q @ np.swapaxes(K, -1, -2)) / math.sqrt(8) @ V  # no normaliser
    close(out, causal_linear)
    out = retention(Q, K, V, gammas=np.zeros(3), initial_state=S0)
    close(out, (Q * K).sum(-1, keepdims=True) / math.sqrt(8) * V)  # only the diagonal, no initial state
    np.testing.assert_array_equal(decay_powers(np.array([0.0, 0.5]), np.array([0, 1, 2])), [[1, 0, 0], [1, 0.5, 0.25]])


def test_long_runs_underflow_to_zero_without_nan():
    q, k = rng.standard_normal((2, 1, 1, 600, 4))
    v = rng.standard_normal((1, 1, 600, 4))
    with np.errstate(over="raise", invalid="raise"):  # underflow is the expected outcome
        for form, chunk in (("parallel", None), ("recurrent", None), ("chunkwise", 256)):
            out = retention(q, k, v, gammas=np.array([1e-3]), form=form, chunk_size=chunk)
            assert np.isfinite(out).all()
    # With g = 1e-3, terms more than a few positions back vanish: out[n] is the last few terms.
    near = np.zeros_like(v)
    for d in range(6):  # scale = 1 / sqrt(4)
        near[..., d:, :] += (
            1e-3**d * (q[..., d:, :] * k[..., : 600 - d, :]).sum(-1, keepdims=True) / 2 * v[..., : 600 - d, :]
        )
    close(out, near, 1e-12)


def test_state_passed_on_continues_the_sequence():
    full_out, full_state = retention(Q, K, V, gammas=G, initial_state=S0, return_state=True)
    for cut in (0, 7, 19):
        out1, s1 = retention(Q[:, :, :cut], K[:, :, :cut], V[:, :, :cut], gammas=G, initial_state=S0, return_state=True)
        out2, s2 = retention(
            Q[:, :, cut:], K[:, :, cut:], V[:, :, cut:], gammas=G, form="recurrent", initial_state=s1, return_state=True
        )
        close(np.concatenate([out1, out2], axis=2), full_out)
        close(s2, full_state)
    empty = retention(Q[:, :, :0], K[:, :, :0], V[:, :, :0], gammas=G, initial_state=S0, return_state=True)
    assert empty[0].shape == (2, 3, 0, 5)
    np.testing.assert_array_equal(empty[1], S0)


def test_heads_are_independent_and_use_their_own_decay():
    out = retention(Q, K, V, gammas=G)
    for h in range(3):
        close(out[:, h : h + 1], retention(Q[:, h : h + 1], K[:, h : h + 1], V[:, h : h + 1], gammas=G[h : h + 1]))


def test_paper_decays():
    np.testing.assert_array_equal(retention_decays(3), [31 / 32, 63 / 64, 127 / 128])
    g = retention_decays(50)
    assert g[48] == 1 - 2.0**-53 and g[49] == 1.0  # exact while representable, then 1.0
    assert np.all(np.diff(g) >= 0)
