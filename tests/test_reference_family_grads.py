"""The float64 backward passes of linear attention, retention and sparse attention
(``reference/linear_grad.py``, ``retention_grad.py``, ``sparse_grad.py``) against central finite
differences of their forward references and against ``torch.autograd`` through forwards written
here, on random shapes covering every option."""

from __future__ import annotations

import importlib.util
import zlib

import numpy as np
import pytest

from attnspec.reference import linear, retention, sparse
from attnspec.reference.linear_grad import linear_attention_backward
from attnspec.reference.retention_grad import retention_backward
from attnspec.reference.sparse_grad import sparse_backward
from tests.finite_difference import central_difference

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")

LINEAR = {  # name -> (B, H, N_q, N_k, D_qk, D_v, options); states: "S0", "z0"
    "elu_causal_eps_states": (1, 2, 4, 4, 3, 2, dict(causal=True, eps=0.5, scale=0.7, states=("S0", "z0"))),
    "elu_cross_chunked": (2, 1, 3, 5, 2, 3, dict(form="chunked", chunk_size=2)),
    "relu_dead_rows_recurrent": (1, 2, 4, 4, 3, 2, dict(feature_map="relu", causal=True, form="recurrent")),
    "relu_normalizer_only": (1, 1, 3, 4, 2, 2, dict(feature_map="relu", eps=1e-3, states=("z0",))),
    "identity_unnormalised_state": (
        1,
        2,
        3,
        3,
        2,
        3,
        dict(feature_map="identity", normalize=False, causal=True, scale=1.3, states=("S0",)),
    ),
    "elu_unnormalised": (2, 1, 2, 4, 3, 2, dict(normalize=False, form="chunked", chunk_size=3)),
}

RETENTION = {  # name -> (B, H, N, D_k, D_v, gammas, options)
    "parallel_state": (1, 2, 4, 3, 2, (0.9, 0.5), dict(initial_state=True, scale=0.7)),
    "chunkwise_edges": (2, 3, 5, 2, 3, (0.0, 1.0, 0.96875), dict(form="chunkwise", chunk_size=2)),
    "recurrent_state": (1, 1, 3, 2, 2, (0.3,), dict(form="recurrent", initial_state=True)),
}

SPARSE = {  # name -> (B, H_q, H_kv, N_q, N_k, D_qk, D_v, block_q, block_k, layout heads, density)
    "gqa_per_head_layout": (1, 4, 2, 6, 6, 3, 2, 2, 3, 4, 0.5),
    "decode_rows_partial_tiles": (2, 2, 2, 3, 7, 2, 3, 3, 2, 1, 0.6),
}


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _linear_inputs(name):
    b, h, n_q, n_k, d_qk, d_v, options = LINEAR[name]
    rng, options = _rng(name), dict(options)
    arrays = {
        "q": rng.standard_normal((b, h, n_q, d_qk)),
        "k": rng.standard_normal((b, h, n_k, d_qk)),
        "v": rng.standard_normal((b, h, n_k, d_v)),
    }
    if name == "relu_dead_rows_recurrent":  # query 1 has no positive feature: den = 0, out = 0
        arrays["q"][:, :, 1] = -np.abs(arrays["q"][:, :, 1])
    states = options.pop("states", ())
    if "S0" in states:
        arrays["initial_state"] = rng.standard_normal((b, h, d_qk, d_v))
    if "z0" in states:
        arrays["initial_normalizer"] = rng.uniform(0.5, 2, (b, h, d_qk))
    return arrays, rng.standard_normal((b, h, n_q, d_v)), options


def _retention_inputs(name):
    b, h, n, d_k, d_v, gammas, options = RETENTION[name]
    rng, options = _rng(name), dict(options)
    arrays = {x: rng.standard_normal((b, h, n, d_v if x == "v" else d_k)) for x in ("q", "k", "v")}
    if options.pop("initial_state", False):
        arrays["initial_state"] = rng.standard_normal((b, h, d_k, d_v))
    return arrays, rng.standard_normal((b, h, n, d_v)), {**options, "gammas": np.asarray(gammas)}


def _sparse_inputs(name):
    b, h_q, h_kv, n_q, n_k, d_qk, d_v, block_q, block_k, heads, density = SPARSE[name]
    rng = _rng(name)
    arrays = {"q": rng.standard_normal((b, h_q, n_q, d_qk))}
    arrays |= {x: rng.standard_normal((b, h_kv, n_k, d_v if x == "v" else d_qk)) for x in ("k", "v")}
    layout = rng.random((heads, -(-n_k // block_q), -(-n_k // block_k))) < density
    layout[0, -1] = False  # the last query rows see no key
    options = dict(pattern="block_sparse", scale=0.8, layout=layout, block_q=block_q, block_k=block_k)
    return arrays, rng.standard_normal((b, h_q, n_q, d_v)), options


FAMILIES = {  # family -> (inputs, forward reference, backward reference, case names)
    "linear": (_linear_inputs, linear.linear_attention, linear_attention_backward, LINEAR),
    "retention": (_retention_inputs, retention.retention, retention_backward, RETENTION),
    "sparse": (_sparse_inputs, sparse.sparse, sparse_backward, SPARSE),
}
ALL_CASES = [(family, name) for family, spec in FAMILIES.items() for name in sorted(spec[3])]


@pytest.mark.parametrize(("family", "name"), ALL_CASES)
def test_gradients_match_central_finite_differences(family, name):
    inputs, forward, backward, _ = FAMILIES[family]
    arrays, dout, options = inputs(name)
    grads = backward(**arrays, dout=dout, **options)
    assert len(grads) == len(arrays)

    def loss():
        return float((forward(**arrays, **options) * dout).sum())

    for (key, x), grad in zip(arrays.items(), grads, strict=True):
        assert grad.shape == x.shape, key
        numeric = central_difference(x, loss)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=f"{name}: d{key}")


def test_linear_rows_without_denominator_contribute_nothing():
    arrays, dout, options = _linear_inputs("relu_dead_rows_recurrent")
    dq, dk, dv = linear_attention_backward(**arrays, dout=dout, **options)
    assert (dq[:, :, 1] == 0).all() and np.isfinite(dq).all()
    dout[:, :, 1] = np.nan  # never read: the row's output is 0 whatever it is
    again = linear_attention_backward(**arrays, dout=dout, **options)
    np.testing.assert_array_equal(again[1], dk)


def test_masked_blocks_get_exactly_zero_gradient():
    arrays, dout, options = _sparse_inputs("decode_rows_partial_tiles")
    dq, dk, dv = sparse_backward(**arrays, dout=dout, **options)
    table = sparse.sparse_mask("block_sparse", 3, 7, **{n: options[n] for n in ("layout", "block_q", "block_k")})
    assert (dq[:, :, -1] == 0).all()  # its layout row is empty
    unseen = ~table.any(axis=(1, 2))[0]
    assert unseen.any() and (dk[:, :, unseen] == 0).all() and (dv[:, :, unseen] == 0).all()


@pytest.mark.parametrize(
    ("backward", "arrays", "bad"),
    [
        (linear_attention_backward, _linear_inputs, "elu_cross_chunked"),
        (retention_backward, _retention_inputs, "parallel_state"),
    ],
)
def test_dout_of_the_wrong_shape_is_refused_by_name(backward, arrays, bad):
    given, dout, options = arrays(bad)
    with pytest.raises(ValueError, match=r"dout must have out's shape"):
        backward(**given, dout=dout[..., :1], **options)


def _torch_linear(t, options):
    import torch

    phi = {"elu+1": lambda x: torch.nn.functional.elu(x) + 1, "relu": torch.relu, "identity": lambda x: x}
    fq = phi[options.get("feature_map", "elu+1")](t["q"]) * options.get("scale", 1.0)
    fk = phi[options.get("feature_map", "elu+1")](t["k"])
    a = fq @ fk.transpose(-1, -2)
    if options.get("causal"):
        a = torch.tril(a)
    num = a @ t["v"] + (fq @ t["initial_state"] if "initial_state" in t else 0)
    if not options.get("normalize", True):
        return num
    den = a.sum(-1) + (fq @ t["initial_normalizer"][..., None])[..., 0] if "initial_normalizer" in t else a.sum(-1)
    den = den + options.get("eps", 0.0)
    live = den != 0
    return torch.where(live[..., None], num / torch.where(live, den, 1.0)[..., None], 0.0)


def _torch_retention(t, options):
    import torch

    n = t["q"].shape[2]
    scale = options.get("scale") or t["q"].shape[-1] ** -0.5
    gammas = torch.as_tensor(options["gammas"])[:, None, None]
    e = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    decay = torch.where(e >= 0, gammas ** e.clamp(min=0), 0.0)  # 0 ** 0 = 1 in torch
    out = ((t["q"] @ t["k"].transpose(-1, -2)) * scale * decay) @ t["v"]
    if "initial_state" in t:
        out = out + scale * gammas[..., 0:1] ** (torch.arange(n)[:, None] + 1) * (t["q"] @ t["initial_state"])
    return out


def _torch_sparse(t, options):
    import torch

    params = {n: options[n] for n in ("layout", "block_q", "block_k")}
    mask = torch.as_tensor(sparse.sparse_mask("block_sparse", t["q"].shape[2], t["k"].shape[2], **params))
    group = t["q"].shape[1] // t["k"].shape[1]
    k, v = t["k"].repeat_interleave(group, 1), t["v"].repeat_interleave(group, 1)
    s = torch.where(mask, options["scale"] * t["q"] @ k.transpose(-1, -2), float("-inf"))
    has_key = mask.any(-1, keepdim=True)
    p = torch.softmax(torch.where(has_key, s, 0.0), dim=-1) * has_key
    return p @ v


@needs_torch
@pytest.mark.parametrize(("family", "name"), ALL_CASES)
def test_gradients_match_torch_autograd_in_float64(family, name):
    import torch

    inputs, _, backward, _ = FAMILIES[family]
    forward = {"linear": _torch_linear, "retention": _torch_retention, "sparse": _torch_sparse}[family]
    arrays, dout, options = inputs(name)
    leaves = {key: torch.tensor(x, requires_grad=True) for key, x in arrays.items()}
    (forward(leaves, options) * torch.as_tensor(dout)).sum().backward()
    grads = backward(**arrays, dout=dout, **options)
    for (key, leaf), grad in zip(leaves.items(), grads, strict=True):
        np.testing.assert_allclose(grad, leaf.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{name}: d{key}")
