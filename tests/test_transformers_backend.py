"""The Hugging Face transformers adapter (``backends/transformers_hf.py``): it declines cleanly
without transformers, and with it runs transformers' own attention functions unchanged."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from attnspec import BackendError, load_backend, reference  # noqa: E402


def test_without_transformers_the_backend_says_what_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    for spec in ("transformers", "transformers:eager"):
        with pytest.raises(BackendError, match="needs Hugging Face transformers: pip install transformers"):
            load_backend(spec)


def test_unknown_variant_is_an_error():
    with pytest.raises(BackendError, match="variant must be one of"):
        load_backend("transformers:flash")


@pytest.mark.parametrize("variant", ["sdpa", "eager"])
def test_gqa_mask_and_scale_as_the_models_call_them(variant):
    pytest.importorskip("transformers")
    import torch

    backend = load_backend(f"transformers:{variant}")
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 4, 3, 8)), rng.standard_normal((2, 2, 5, 8)), rng.standard_normal((2, 2, 5, 6))
    mask = rng.random((2, 1, 3, 5)) < 0.8
    mask[..., 0] = True  # no fully masked row: the eager function's additive mask gives those the mean of V
    got = backend.sdpa(
        *(torch.from_numpy(x.astype(np.float32)) for x in (q, k, v)), scale=0.3, mask=torch.from_numpy(mask)
    )
    want = reference.sdpa(q, k, v, scale=0.3, mask=mask)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_sdpa_variant_drops_is_causal_for_a_single_query():
    """A finding, kept as a test: with N_q = 1 transformers' sdpa_attention_forward attends to every
    key under is_causal (a decoding step's convention), where top-left causal sees key 0 only."""
    pytest.importorskip("transformers")
    import torch

    backend = load_backend("transformers:sdpa")
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 1, 1, 8)), rng.standard_normal((1, 1, 4, 8)), rng.standard_normal((1, 1, 4, 8))
    got = backend.sdpa(*(torch.from_numpy(x) for x in (q, k, v)), causal="top_left").numpy()
    np.testing.assert_allclose(got, reference.sdpa(q, k, v), atol=1e-12)  # no causal rule at all
    assert np.abs(got - reference.sdpa(q, k, v, causal="top_left")).max() > 1e-3
