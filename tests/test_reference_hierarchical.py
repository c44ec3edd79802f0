"""The NSA, routed and LSH references: bad input names the argument; the definitions agree with
hand-worked examples, with dense attention where they reduce to it, and with their equivalent forms."""

from __future__ import annotations

import numpy as np
import pytest

from attnspec import reference
from attnspec.reference import lsh, nsa, routed
from attnspec.reference.lsh import LSH
from attnspec.reference.nsa import NSA

rng = np.random.default_rng(0)
Q, K, V = rng.standard_normal((2, 4, 12, 8)), rng.standard_normal((2, 2, 12, 8)), rng.standard_normal((2, 2, 12, 5))
BLOCKS = dict(cmp_len=4, cmp_stride=2, sel_len=4, top_n=2)
GATES = np.tile([0.2, 0.5, 0.3], (2, 4, 12, 1))
CENTROIDS = rng.standard_normal((4, 3, 8))
ROTATIONS = rng.standard_normal((2, 8, 3))


def _nsa(**changes):
    kwargs = dict(BLOCKS, gates=GATES, window=3)
    kwargs.update(changes)
    return nsa.nsa(Q, K, V, **kwargs)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: _nsa(gates=GATES[..., :2]), ValueError, r"gates must be finite with shape \(B, H_q, N_q, 3\)"),
        (lambda: _nsa(gates=np.full_like(GATES, np.nan)), ValueError, "gates must be finite"),
        (lambda: _nsa(gates=GATES.astype(int)), TypeError, "gates must be a real floating-point array"),
        (lambda: _nsa(cmp_len=0), ValueError, "cmp_len must be >= 1"),
        (lambda: _nsa(cmp_len=3), ValueError, "cmp_len must be a multiple of cmp_stride = 2"),
        (lambda: _nsa(sel_len=6, cmp_stride=4, cmp_len=4), ValueError, "sel_len must be a multiple of cmp_stride = 4"),
        (lambda: _nsa(cmp_len=8), ValueError, "cmp_len must be <= sel_len = 4"),
        (lambda: _nsa(top_n=True), TypeError, "top_n must be an integer"),
        (lambda: _nsa(init_blocks=2, local_blocks=1), ValueError, r"init_blocks \+ local_blocks must be <= top_n = 2"),
        (lambda: _nsa(local_blocks=-1), ValueError, "local_blocks must be >= 0"),
        (lambda: _nsa(window=0), ValueError, "window must be >= 1"),
        (lambda: _nsa(window=2.0), TypeError, "window must be an integer"),
        (lambda: _nsa(compress_k=np.ones(3)), ValueError, r"compress_k must be None, of shape \(cmp_len,\) = \(4,\)"),
        (
            lambda: _nsa(compress_v=np.ones((32, 8))),
            ValueError,
            r"compress_v must be .* \(cmp_len \* D, D\) = \(20, 5\)",
        ),
        (lambda: _nsa(compress_k=np.ones(4, int)), TypeError, "compress_k must be a real floating-point array"),
        (lambda: _nsa(compress_k=np.full(4, np.inf)), ValueError, "compress_k must be finite"),
        (
            lambda: nsa.nsa(Q, K[:, :, :5], V[:, :, :5], gates=GATES, window=3, **BLOCKS),
            ValueError,
            "nsa needs N_q <= N_k",
        ),
        (lambda: nsa.nsa_select(Q[:, :3], K, **BLOCKS), ValueError, r"H_q = 3 \(q.shape\[1\]\) must be a multiple"),
        (lambda: routed.routed(Q, K, V, centroids=CENTROIDS[:3]), ValueError, r"centroids must have shape \(H_q, C, D"),
        (lambda: routed.routed(Q, K, V, centroids=CENTROIDS[:, :0]), ValueError, "with C >= 1"),
        (lambda: routed.routed_assign(Q, K, centroids=np.zeros((4, 2, 8))), ValueError, "must be finite and nonzero"),
        (lambda: routed.routed_assign(Q, K, centroids=CENTROIDS.astype(int)), TypeError, "centroids must be a real"),
        (
            lambda: routed.routed(Q, K, V, centroids=CENTROIDS, causal=True),
            ValueError,
            "causal must be None, 'top_left'",
        ),
        (lambda: lsh.lsh_buckets(Q, rotations=ROTATIONS[0]), ValueError, "rotations must have 3 dimensions"),
        (
            lambda: lsh.lsh_buckets(Q, rotations=ROTATIONS[:, :5]),
            ValueError,
            r"rotations must have shape \(n_rounds, D",
        ),
        (lambda: lsh.lsh_buckets(Q, rotations=ROTATIONS[:, :, :0]), ValueError, "n_buckets >= 2"),
        (lambda: lsh.lsh_buckets(Q, rotations=np.full((1, 8, 2), np.nan)), ValueError, "rotations must be finite"),
        (lambda: lsh.lsh(Q, Q[..., :3], rotations=ROTATIONS, chunk_len=0), ValueError, "chunk_len must be >= 1"),
        (
            lambda: lsh.lsh(Q, Q[..., :3], rotations=ROTATIONS, chunk_len=5),
            ValueError,
            "chunk_len must divide the sequence length N = 12; got chunk_len = 5",
        ),
        (
            lambda: lsh.lsh(Q, Q[..., :3], rotations=ROTATIONS, chunk_len=4, causal="top_left"),
            TypeError,
            "causal must be a bool",
        ),
        (lambda: lsh.lsh(Q, V, rotations=ROTATIONS, chunk_len=4), ValueError, "batch sizes differ|v must have"),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def _one_hot_gates(branch: int, shape=(2, 4, 12)) -> np.ndarray:
    gates = np.zeros(shape + (3,))
    gates[..., branch] = 1.0
    return gates


@pytest.mark.parametrize("n_q", [12, 5, 1])
def test_nsa_reduces_to_causal_dense_attention(n_q):
    """Every block selected (gates (0, 1, 0)) or a window over everything (0, 0, 1): causal sdpa."""
    q = Q[:, :, -n_q:]
    dense = reference.sdpa(q, K, V, causal="bottom_right")
    selected = nsa.nsa(q, K, V, gates=_one_hot_gates(1, q.shape[:3]), window=1, **dict(BLOCKS, top_n=3))
    window = nsa.nsa(q, K, V, gates=_one_hot_gates(2, q.shape[:3]), window=12, **BLOCKS)
    np.testing.assert_allclose(selected, dense, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(window, dense, rtol=1e-13, atol=1e-14)


def test_nsa_compressed_branch_by_hand():
    """Block means of [2c, 2c + 4) for blocks complete at each row, attended by sdpa; rows 0-2 see none."""
    out = nsa.nsa(Q, K, V, gates=_one_hot_gates(0), window=1, **BLOCKS)
    means_k = np.stack([K[:, :, 2 * c : 2 * c + 4].mean(axis=2) for c in range(5)], axis=2)
    means_v = np.stack([V[:, :, 2 * c : 2 * c + 4].mean(axis=2) for c in range(5)], axis=2)
    complete = np.array([[2 * c + 3 <= i for c in range(5)] for i in range(12)])
    expected = reference.sdpa(Q, means_k, means_v, mask=complete)
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(out[:, :, :3], 0.0)


def test_nsa_linear_compression_is_token_major():
    """The map kron(w, I) on the flattened block equals the position weights w."""
    w = rng.standard_normal(4)
    by_position = nsa.nsa(Q, K, V, gates=GATES, window=3, compress_k=w, compress_v=w, **BLOCKS)
    by_map = nsa.nsa(
        Q,
        K,
        V,
        gates=GATES,
        window=3,
        compress_k=np.kron(w[:, None], np.eye(8)),
        compress_v=np.kron(w[:, None], np.eye(5)),
        **BLOCKS,
    )
    np.testing.assert_allclose(by_map, by_position, rtol=1e-12, atol=1e-14)


def test_nsa_importance_is_the_group_sum_of_p_cmp_when_blockings_agree():
    problem = NSA.build(Q, K, cmp_len=4, cmp_stride=4, sel_len=4, top_n=1)
    p = problem.cmp_probabilities()
    np.testing.assert_allclose(problem.importance()[..., :3], p.reshape(2, 2, 2, 12, 3).sum(axis=2), rtol=1e-14)
    weights = NSA.build(Q, K, cmp_len=4, cmp_stride=2, sel_len=8, top_n=1).block_weights()
    np.testing.assert_array_equal(weights, [[1, 0], [1, 0], [1, 0], [0.5, 0.5], [0, 1]])  # [6, 10) straddles


def _eq9(p: np.ndarray, cmp_len: int, cmp_stride: int, sel_len: int, blocks: int, shift: int) -> np.ndarray:
    """The paper's Eq. 9 by loops: ``sum_m sum_n p[(l'/d) j - m - n + shift]``, 0 outside ``[0, N_c)``."""
    out = np.zeros(p.shape[:-1] + (blocks,))
    for j in range(blocks):
        for m in range(sel_len // cmp_stride):
            for n in range(cmp_len // cmp_stride):
                c = (sel_len // cmp_stride) * j - m - n + shift
                if 0 <= c < p.shape[-1]:
                    out[..., j] += p[..., c]
    return out


@pytest.mark.parametrize(
    "cmp_len, cmp_stride, sel_len", [(4, 2, 8), (2, 2, 4), (4, 2, 6), (4, 1, 6), (4, 4, 4), (32, 16, 64)]
)
def test_nsa_importance_is_eq9_with_the_index_aligned(cmp_len, cmp_stride, sel_len):
    """``imp = (d / l) sum_m sum_n p_cmp[(l'/d)(j+1) - 1 - m - n]``: the literal index ``(l'/d) j - m - n``
    shifted by ``l'/d - 1`` strides, which differs from the literal one unless ``l' = d``."""
    k = rng.standard_normal((1, 2, 160, 8))
    q = rng.standard_normal((1, 4, 160, 8))
    problem = NSA.build(q, k, cmp_len=cmp_len, cmp_stride=cmp_stride, sel_len=sel_len, top_n=1)
    p = problem.cmp_probabilities().reshape(1, 2, 2, 160, -1).sum(axis=2)
    aligned = _eq9(p, cmp_len, cmp_stride, sel_len, problem.num_blocks, sel_len // cmp_stride - 1)
    np.testing.assert_allclose(problem.importance(), cmp_stride / cmp_len * aligned, rtol=1e-13, atol=1e-16)
    literal = _eq9(p, cmp_len, cmp_stride, sel_len, problem.num_blocks, 0)
    assert np.allclose(aligned, literal) == (sel_len == cmp_stride)


def test_nsa_selection_by_hand():
    """q = 0: equal importance, so the lowest blocks win; forced blocks come first; -1 pads."""
    q = np.zeros((1, 1, 16, 2))
    k = rng.standard_normal((1, 1, 16, 2))
    blocks = nsa.nsa_select(q, k, cmp_len=2, cmp_stride=2, sel_len=2, top_n=3, local_blocks=1)[0, 0]
    np.testing.assert_array_equal(
        blocks[[0, 1, 2, 3, 15]], [[0, -1, -1], [0, -1, -1], [0, 1, -1], [0, 1, -1], [0, 1, 7]]
    )
    top = nsa.nsa_select(q, k, cmp_len=2, cmp_stride=2, sel_len=2, top_n=3, init_blocks=1)[0, 0, 15]
    np.testing.assert_array_equal(top, [0, 1, 2])


def test_nsa_is_causal():
    """Changing keys and values after position p leaves rows 0..p unchanged, exactly."""
    p = 6
    k, v = K.copy(), V.copy()
    k[:, :, p + 1 :], v[:, :, p + 1 :] = 1e4, -1e4
    np.testing.assert_array_equal(
        _nsa(compress_k=None)[:, :, : p + 1], nsa.nsa(Q, k, v, gates=GATES, window=3, **BLOCKS)[:, :, : p + 1]
    )


def test_routed_assignment():
    """Nearest centroid among unit vectors; the scale of x does not matter; ties to the lowest index."""
    q_clusters, k_clusters = routed.routed_assign(Q, K, centroids=CENTROIDS)
    unit = CENTROIDS / np.linalg.norm(CENTROIDS, axis=-1, keepdims=True)
    x = Q / np.linalg.norm(Q, axis=-1, keepdims=True)
    distance = np.linalg.norm(x[..., None, :] - unit[None, :, None], axis=-1)
    np.testing.assert_array_equal(q_clusters, distance.argmin(axis=-1))
    np.testing.assert_array_equal(routed.routed_assign(3 * Q, 0.5 * K, centroids=CENTROIDS)[0], q_clusters)
    assert k_clusters.shape == (2, 4, 12)
    tied = np.concatenate([CENTROIDS[:, :1], 2 * CENTROIDS[:, :1]], axis=1)  # the same direction twice
    assert (routed.routed_assign(Q, K, centroids=tied)[0] == 0).all()
    assert (routed.routed_assign(np.zeros_like(Q), K, centroids=CENTROIDS)[0] == 0).all()


def test_routed_with_one_cluster_is_dense_and_empty_clusters_are_zero():
    out, lse = routed.routed(Q, K, V, centroids=CENTROIDS[:, :1], causal="bottom_right")
    dense, dense_lse = reference.sdpa(Q, K, V, causal="bottom_right", return_lse=True)
    np.testing.assert_array_equal(out, dense)
    np.testing.assert_array_equal(lse, dense_lse)
    axis = np.ones(8)
    centroids = np.broadcast_to(np.stack([axis, -axis]), (4, 2, 8))
    q = np.concatenate([Q[..., :6, :] + 5, Q[..., 6:, :] - 5], axis=2)  # clusters 0 then 1
    out, lse = routed.routed(q, K + 5, V, centroids=centroids)  # every key in cluster 0
    assert np.isneginf(lse[..., 6:]).all() and (out[..., 6:, :] == 0).all() and np.isfinite(lse[..., :6]).all()


def test_routed_is_permutation_equivariant():
    perm_q, perm_k = rng.permutation(12), rng.permutation(12)
    out, _ = routed.routed(Q, K, V, centroids=CENTROIDS)
    permuted, _ = routed.routed(Q[:, :, perm_q], K[:, :, perm_k], V[:, :, perm_k], centroids=CENTROIDS)
    np.testing.assert_allclose(permuted, out[:, :, perm_q], rtol=1e-13, atol=1e-14)


def test_lsh_buckets_and_chunks_by_hand():
    """y = x_0: tokens + - + + - + hash to 0 1 0 0 1 0; sorted 0 2 | 3 5 | 1 4 in chunks of 2."""
    qk = np.array([[1, 0.3], [-1, 0.2], [2, -1], [0.5, 1], [-0.5, 0], [1, 1]])[None, None]
    rotations = np.array([[[1.0], [0.0]]])
    problem = LSH.build(qk, np.eye(6)[None, None], rotations=rotations, chunk_len=2)
    np.testing.assert_array_equal(problem.buckets()[0, 0, 0], [0, 1, 0, 0, 1, 0])
    others = {i: set(np.flatnonzero(row)) for i, row in enumerate(problem.others()[0, 0, 0])}
    assert others == {0: {2}, 1: {4}, 2: {0}, 3: {0, 2, 5}, 4: {1}, 5: {0, 2, 3}}
    assert lsh.lsh_buckets(np.zeros((1, 1, 2, 2)), rotations=rotations).tolist() == [[[[0, 0]]]]


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_rounds_count_each_key_once(causal):
    """Per-round partials with the bias -log N_ij, merged by LSE, equal sdpa over the union of the
    rounds' visible sets; without that bias a key seen in N_ij rounds would count N_ij times."""
    problem = LSH.build(Q, np.abs(Q), rotations=ROTATIONS, chunk_len=3, causal=causal)
    q, k, v, options = problem.equivalent()
    np.testing.assert_allclose(problem.output(), reference.sdpa(q, k, v, **options), rtol=1e-13, atol=1e-14)
    count = problem.others().sum(axis=2)
    assert (count > 1).any()
    per_round = reference.sdpa(q, k, v, bias=np.log(np.maximum(count, 1)), **options)
    assert not np.allclose(per_round, problem.output(), rtol=1e-6)


def test_lsh_one_bucket_one_chunk_is_dense_without_the_self_key():
    qk = np.abs(Q) + 0.1  # positive: bucket 0 under a positive rotation
    rotations = np.ones((3, 8, 1))
    out = lsh.lsh(qk, V[:, :1].repeat(4, axis=1), rotations=rotations, chunk_len=12, causal=True)
    keys = qk / np.linalg.norm(qk, axis=-1, keepdims=True)
    mask = np.tril(np.ones((12, 12), bool), -1)
    mask[0, 0] = True  # token 0 has no other key: it reads its own value
    dense = reference.sdpa(qk, keys, V[:, :1].repeat(4, axis=1), mask=mask)
    np.testing.assert_allclose(out, dense, rtol=1e-13, atol=1e-14)


def test_lsh_repeated_round_and_self_fallback():
    """A round repeated changes nothing (its keys count once); a token alone in every round reads its value."""
    once = lsh.lsh(Q, V[:, :1].repeat(4, axis=1), rotations=ROTATIONS[:1], chunk_len=3)
    twice = lsh.lsh(Q, V[:, :1].repeat(4, axis=1), rotations=ROTATIONS[[0, 0]], chunk_len=3)
    np.testing.assert_allclose(twice, once, rtol=1e-13, atol=1e-14)
    problem = LSH.build(Q, np.abs(Q), rotations=ROTATIONS, chunk_len=1)  # chunks of one: only the previous token
    alone = problem.alone(problem.others())
    assert alone.any()
    np.testing.assert_array_equal(problem.output()[alone], np.abs(Q)[alone])


def test_lsh_one_chunk_is_permutation_equivariant():
    perm = rng.permutation(12)
    out = lsh.lsh(Q, np.abs(Q), rotations=ROTATIONS, chunk_len=12)
    permuted = lsh.lsh(Q[:, :, perm], np.abs(Q)[:, :, perm], rotations=ROTATIONS, chunk_len=12)
    np.testing.assert_allclose(permuted, out[:, :, perm], rtol=1e-13, atol=1e-14)
