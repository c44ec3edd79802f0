"""The ``xformers`` adapter's mapping of the spec's options onto xFormers' attention-bias classes.

Its kernels need CUDA (the suite runs them there: ``pytest conformance --backend=xformers``); what
is checked here, on the CPU, is the adapter's own part: every bias it builds, materialised by
xFormers, hides exactly the keys the reference's rules hide, and it declines what no class states.
The merge (``flash.merge``) runs on the CPU in Triton's interpreter, in the suite.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("xformers.ops")
torch = pytest.importorskip("torch")

from attnspec.backends import xformers as adapter  # noqa: E402
from attnspec.backends.torch_tiled import kernel as torch_kernel  # noqa: E402
from attnspec.contract import Unsupported  # noqa: E402
from attnspec.reference.sdpa import prepare, visible  # noqa: E402

FMHA = adapter._fmha()


def tensors(n_q, n_k, h_q=2, h_kv=2):
    return torch.zeros(1, h_q, n_q, 4), torch.zeros(1, h_kv, n_k, 4), torch.zeros(1, h_kv, n_k, 4)


def visible_by_xformers(bias, n_q, n_k) -> np.ndarray:
    if bias is None:
        return np.ones((n_q, n_k), bool)
    return (bias.materialize((1, 1, n_q, n_k), dtype=torch.float32) == 0).numpy()[0, 0]


def visible_by_reference(n_q, n_k, options) -> np.ndarray:
    q, k, v = (np.zeros(x.shape) for x in tensors(n_q, n_k))
    return visible(prepare(q, k, v, **options), range(n_q), range(n_k))[0, 0]


RULES = [dict(causal=c) for c in (None, "top_left", "bottom_right")]
RULES += [dict(window=w) for w in itertools.product((-1, 0, 1, 3), (-1, 0, 2))]
RULES += [dict(window=w, causal="bottom_right") for w in ((2, 1), (0, -1), (-1, 3))]


@pytest.mark.parametrize("n_q, n_k", [(1, 1), (3, 7), (7, 3), (5, 5), (1, 9)])
@pytest.mark.parametrize("options", RULES, ids=str)
def test_bias_hides_exactly_the_keys_the_rules_hide(n_q, n_k, options):
    problem = torch_kernel.prepare(*tensors(n_q, n_k), **options)
    bias = adapter.attention_bias(FMHA, problem)
    np.testing.assert_array_equal(
        visible_by_xformers(bias, n_q, n_k), visible_by_reference(n_q, n_k, options), err_msg=str(options)
    )


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(mask=torch.ones(3, 5, dtype=torch.bool)), "mask, softcap and ALiBi"),
        (dict(softcap=5.0), "mask, softcap and ALiBi"),
        (dict(kv_lens=np.array([4])), "q_lens/kv_lens"),
        (dict(window=(1, 0), window_align="top_left"), "top-left window"),
        (dict(window=(1, 0), causal="top_left"), "top-left causality"),
        (dict(bias=torch.zeros(3, 5), causal="top_left"), "a bias with a causal or window rule"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_declines_what_no_bias_class_states(options, match):
    problem = torch_kernel.prepare(*tensors(3, 5), **options)
    with pytest.raises(Unsupported, match=match):
        adapter.attention_bias(FMHA, problem, options.get("bias"))


def test_bias_tensor_rows_are_padded_and_grouped_for_gqa():
    bias = torch.arange(4 * 3 * 5, dtype=torch.float32).reshape(1, 4, 3, 5)
    problem = torch_kernel.prepare(*tensors(3, 5, h_q=4, h_kv=2), bias=bias)
    grouped = adapter.attention_bias(FMHA, problem, bias)
    assert grouped.shape == (1, 2, 2, 3, 5) and grouped.stride(-2) % 16 == 0
    torch.testing.assert_close(grouped.reshape(1, 4, 3, 5), bias, rtol=0, atol=0)


@pytest.mark.parametrize(
    "ids, lengths",
    [([0, 0, 1, 1, 1], [2, 3, 2, 3]), ([[5, 5, 5, 2, 2], [1, 2, 3, 3, 3]], [3, 2, 1, 1, 3]), ([7] * 5, [5, 5])],
)
def test_document_runs_are_the_block_diagonal_lengths(ids, lengths):
    assert adapter.document_runs(np.array(ids), 2, 5) == lengths


def test_a_document_in_two_runs_is_declined():
    with pytest.raises(Unsupported, match="contiguous documents"):
        adapter.document_runs(np.array([0, 1, 0]), 1, 3)
