"""The adapters of transformers' attention modules (``backends/transformers_*.py``): they decline
cleanly without transformers, and with it run the modules unchanged, findings kept as tests."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from attnspec import BackendError, load_backend  # noqa: E402
from attnspec.reference import relative  # noqa: E402
from attnspec.reference import sparse as sparse_ref  # noqa: E402

NAMES = ("transformers-bigbird", "transformers-bigbird:eval", "transformers-t5", "transformers-longformer")


def _tensors(*arrays):
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


@pytest.mark.parametrize("name", [*NAMES, "transformers-reformer"])
def test_without_transformers_each_says_what_to_install(monkeypatch, name):
    for module in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(BackendError, match="need Hugging Face transformers: pip install transformers"):
        load_backend(name)


def _bigbird_case(random_blocks):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 40, 8)) for _ in range(3))
    params = dict(block=4, window_blocks=1, global_blocks=np.array([0, 9]), random_blocks=random_blocks)
    return (q, k, v), params


def _bigbird(name, random_blocks):
    pytest.importorskip("transformers")
    (q, k, v), params = _bigbird_case(random_blocks)
    got = load_backend(name).sparse(
        *_tensors(q, k, v), pattern="bigbird", **dict(zip(params, _tensors(*params.values()), strict=True))
    )
    return np.abs(got.numpy() - sparse_ref.sparse(q, k, v, pattern="bigbird", **params)).max()


def test_bigbird_train_uses_the_given_random_blocks():
    blocks = np.zeros((2, 10, 2), np.int64)
    blocks[:, 1:-1] = [[(r + 3) % 8 + 1, (r + 5) % 8 + 1] for r in range(1, 9)]  # none in the window or global
    blocks[:, 1:-1] = np.where(np.abs(blocks[:, 1:-1] - np.arange(1, 9)[:, None]) <= 1, 5, blocks[:, 1:-1])
    assert _bigbird("transformers-bigbird", blocks) < 1e-12


def test_bigbird_eval_counts_block_0_once_per_random_slot():
    """A finding: in eval mode every random slot is block 0, which the module counts again."""
    assert _bigbird("transformers-bigbird:eval", np.zeros((1, 10, 2), np.int64)) > 0.1


def test_bigbird_declines_what_the_module_cannot_express():
    pytest.importorskip("transformers")
    from attnspec import Unsupported

    (q, k, v), params = _bigbird_case(np.ones((1, 10, 2), np.int64))
    backend = load_backend("transformers-bigbird:eval")
    with pytest.raises(Unsupported, match="eval mode"):
        backend.sparse(
            *_tensors(q, k, v), pattern="bigbird", **dict(zip(params, _tensors(*params.values()), strict=True))
        )
    with pytest.raises(Unsupported, match="window"):
        backend.sparse(
            *_tensors(q, k, v), pattern="bigbird", block=4, window_blocks=2, global_blocks=_tensors(np.array([0, 9]))[0]
        )


def test_t5_bucket_on_the_cpu_takes_pytorch_float32_log():
    """A finding (spec t5.bucket's note): offset -12 with 34 buckets, max_distance 27 is bucket 11, not 10."""
    pytest.importorskip("transformers")
    rel = np.arange(-20, 21)
    got = load_backend("transformers-t5").t5_bucket(*_tensors(rel), num_buckets=34, max_distance=27).numpy()
    want = relative.t5_bucket(rel, num_buckets=34, max_distance=27)
    assert sorted(rel[got != want].tolist()) == [-12, 12]


def test_t5_bias_after_cached_tokens():
    pytest.importorskip("transformers")
    table = np.random.default_rng(0).standard_normal((32, 3))
    got = load_backend("transformers-t5").t5_bias(*_tensors(table, np.arange(4) + 7, np.arange(9)), bidirectional=False)
    np.testing.assert_array_equal(
        got.numpy(), relative.t5_bias(table, np.arange(4) + 7, np.arange(9), bidirectional=False)
    )


def test_longformer_float32_with_global_tokens_and_padding():
    pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 21, 8)).astype(np.float32) for _ in range(3))
    flags = rng.random((2, 21)) < 0.15
    q_, k_, v_, flags_ = _tensors(q, k, v, flags)
    got = load_backend("transformers-longformer").sparse(
        q_, k_, v_, pattern="longformer", window=3, global_tokens=flags_
    )
    want = sparse_ref.sparse(q, k, v, pattern="longformer", window=3, global_tokens=flags)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_reformer_buckets_are_the_reference_buckets():
    pytest.importorskip("transformers")
    from attnspec.reference.lsh import LSH

    rng = np.random.default_rng(0)
    qk, rotations = rng.standard_normal((2, 2, 16, 4)), rng.standard_normal((3, 4, 3))
    got = load_backend("transformers-reformer").lsh_buckets(*_tensors(qk), rotations=_tensors(rotations)[0])
    np.testing.assert_array_equal(got.numpy(), LSH.build(qk, rotations=rotations).buckets())
