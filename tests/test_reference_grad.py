"""The float64 backward pass of sdpa (``reference/sdpa_grad.py``) against central finite
differences and against ``torch.autograd``, on small shapes with every option."""

from __future__ import annotations

import importlib.util
import zlib

import numpy as np
import pytest

from attnspec.reference import sdpa as reference_sdpa
from attnspec.reference.sdpa import prepare, scores, visible
from attnspec.reference.sdpa_grad import gradients
from tests.finite_difference import central_difference

CASES = {  # name -> (B, H_q, H_kv, N_q, N_k, D_qk, D_v, options)
    "plain": (1, 2, 2, 3, 4, 3, 2, {}),
    "gqa_cross": (2, 4, 2, 3, 5, 2, 3, {"scale": 0.7}),
    "causal_bottom_right": (1, 2, 1, 4, 6, 3, 3, {"causal": "bottom_right"}),
    "causal_top_left_more_queries": (1, 1, 1, 5, 3, 2, 2, {"causal": "top_left"}),
    "window_lengths": (
        2,
        2,
        2,
        4,
        6,
        2,
        2,
        {"window": (1, 1), "q_lens": np.array([4, 2]), "kv_lens": np.array([6, 3])},
    ),
    "window_top_left": (1, 2, 2, 3, 6, 2, 2, {"window": (1, 0), "window_align": "top_left"}),
    "softcap_bias_alibi": (1, 2, 1, 3, 4, 3, 2, {"softcap": 0.8, "alibi_slopes": np.array([0.5, 0.25])}),
    "mask_with_empty_row": (1, 2, 2, 3, 4, 2, 2, {"mask": np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)}),
    "bias_per_key": (2, 2, 2, 3, 4, 2, 2, {"bias": "per_key"}),
    "padding_zero_lengths": (2, 1, 1, 3, 3, 2, 2, {"q_lens": np.array([0, 3]), "kv_lens": np.array([2, 0])}),
    "bias_minus_inf": (1, 1, 1, 3, 4, 2, 2, {"bias": "minus_inf"}),
}


def _inputs(name):
    b, h_q, h_kv, n_q, n_k, d_qk, d_v, options = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    q, k = rng.standard_normal((b, h_q, n_q, d_qk)), rng.standard_normal((b, h_kv, n_k, d_qk))
    v, dout = rng.standard_normal((b, h_kv, n_k, d_v)), rng.standard_normal((b, h_q, n_q, d_v))
    options = dict(options)
    kind = options.pop("bias", None)
    if kind == "per_key":
        options["bias"] = rng.standard_normal((b, 1, 1, n_k))
    if kind == "minus_inf":  # -inf hides keys; row 2 has every key hidden
        options["bias"] = np.where(
            np.array([[1, 0, 1, 1], [1, 1, 0, 1], [0, 0, 0, 0]], bool), rng.standard_normal((n_q, n_k)), -np.inf
        )
    if name == "softcap_bias_alibi":
        options["bias"] = rng.standard_normal((1, h_q, n_q, n_k))
    return q, k, v, dout, options


def _loss(q, k, v, dout, options):
    return float((reference_sdpa(q, k, v, **options) * dout).sum())


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_central_finite_differences(name):
    q, k, v, dout, options = _inputs(name)
    grads = gradients(q, k, v, dout, **options)
    arrays = {"dq": q, "dk": k, "dv": v}
    if "bias" in options:
        arrays["dbias"] = options["bias"]
    for key, x in arrays.items():
        numeric = central_difference(x, lambda: _loss(q, k, v, dout, options))
        assert grads[key].shape == x.shape, key
        np.testing.assert_allclose(grads[key], numeric, rtol=1e-6, atol=1e-8, err_msg=f"{name}: {key}")


def test_hidden_and_padded_positions_get_exactly_zero_gradient():
    q, k, v, dout, options = _inputs("window_lengths")
    v[1, :, 3:] = np.nan  # past kv_lens of item 1: never read
    grads = gradients(q, k, v, dout, **options)
    assert (grads["dk"][1, :, 3:] == 0).all() and (grads["dv"][1, :, 3:] == 0).all()
    assert (grads["dq"][1, :, 2:] == 0).all()  # rows past q_lens
    assert all(np.isfinite(g).all() for g in grads.values())


def test_fully_masked_rows_contribute_nothing():
    q, k, v, dout, options = _inputs("mask_with_empty_row")
    grads = gradients(q, k, v, dout, **options)
    assert (grads["dq"][:, :, 1] == 0).all()  # row 1 sees no key
    dout_without_row = dout.copy()
    dout_without_row[:, :, 1] = 0
    again = gradients(q, k, v, dout_without_row, **options)
    for key in ("dk", "dv"):
        np.testing.assert_array_equal(grads[key], again[key])


def test_dout_of_the_wrong_shape_is_refused_by_name():
    q, k, v, dout, options = _inputs("plain")
    with pytest.raises(ValueError, match=r"dout must have out's shape"):
        gradients(q, k, v, dout[..., :1], **options)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_torch_autograd_in_float64(name):
    import torch

    q, k, v, dout, options = _inputs(name)
    problem = prepare(q, k, v, **options)
    rows, cols = range(problem.n_q), range(problem.n_k)
    full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    vis = torch.as_tensor(np.broadcast_to(visible(problem, rows, cols), full).copy())
    # ALiBi, a constant here: what the reference adds to the capped scale * q.k besides the bias
    without_bias = {key: val for key, val in options.items() if key != "bias"}
    plain = {key: val for key, val in without_bias.items() if key != "alibi_slopes"}
    alibi = scores(prepare(q, k, v, **without_bias), rows, cols) - scores(prepare(q, k, v, **plain), rows, cols)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tbias = torch.tensor(np.asarray(options["bias"], np.float64), requires_grad=True) if "bias" in options else None
    group = q.shape[1] // k.shape[1]
    s = problem.scale * tq @ tk.repeat_interleave(group, 1).transpose(-1, -2)
    if "softcap" in options:
        s = options["softcap"] * torch.tanh(s / options["softcap"])
    s = s + torch.as_tensor(alibi)
    if tbias is not None:
        s = s + tbias  # -inf hides a key as a mask does
    seen = vis & torch.isfinite(s)
    has_key = seen.any(-1, keepdim=True)
    s = torch.where(seen, s, torch.tensor(float("-inf"), dtype=s.dtype))
    p = torch.softmax(torch.where(has_key, s, torch.zeros_like(s)), dim=-1) * has_key
    out = p @ tv.repeat_interleave(group, 1)
    (out * torch.as_tensor(dout)).sum().backward()
    grads = gradients(q, k, v, dout, **options)
    for key, tensor in (("dq", tq), ("dk", tk), ("dv", tv), ("dbias", tbias)):
        if tensor is not None:
            np.testing.assert_allclose(
                grads[key], tensor.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{name}: {key}"
            )
