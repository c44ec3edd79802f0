"""Routed attention in float64 (clauses ``routed`` and ``routed.assign`` in :mod:`attnspec.hierarchical`).

Routing decides visibility only: the attention itself is ``sdpa`` with the same-cluster mask, so
its equivalent dense problem (:func:`problem`) is the one the conformance suite bounds.
"""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.sdpa import prepare
from attnspec.reference.sdpa import sdpa as dense


def unit(x: np.ndarray) -> np.ndarray:
    """``x / |x|`` along the last axis; a zero vector stays zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def cosines(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``dot(x / |x|, mu_c / |mu_c|)``: ``x`` ``(B, H_q, N, D)``, centroids ``(H_q, C, D)`` -> ``(B, H_q, N, C)``."""
    return unit(x) @ np.swapaxes(unit(centroids), -1, -2)[None]


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Clause ``routed.assign`` for one side: the argmax over centroids, ties to the lowest index."""
    return np.argmax(cosines(x, centroids), axis=-1)  # argmax returns the first maximum


@reference("routed_assign")
def routed_assign(q, k, *, centroids) -> tuple[np.ndarray, np.ndarray]:
    """Clause ``routed.assign``: ``(q_clusters (B, H_q, N_q), k_clusters (B, H_q, N_k))``."""
    q, k, centroids = _validate(q, k, centroids)
    return assign(q, centroids), assign(per_query_head(k, q.shape[1]), centroids)


def per_query_head(k: np.ndarray, h_q: int) -> np.ndarray:
    """``k`` repeated so that query head ``h`` reads its KV head ``h // (H_q / H_kv)`` (``sdpa.gqa``)."""
    return np.repeat(k, h_q // k.shape[1], axis=1)


def problem(q, k, v, *, centroids, causal=None, scale=None) -> tuple:
    """The equivalent ``sdpa`` problem ``(q, k, v, options)``: the same-cluster mask, with ``causal``."""
    q_clusters, k_clusters = routed_assign(q, k, centroids=centroids)
    b, h_q, n_q = q_clusters.shape
    check.fits_in_memory(
        "routed",
        ("same-cluster mask (B, H_q, N_q, N_k)", (b, h_q, n_q, k_clusters.shape[2]), 1),
        ("float64 scores (B, H_q, N_q, N_k)", (b, h_q, n_q, k_clusters.shape[2]), 8),
    )
    mask = q_clusters[..., :, None] == k_clusters[..., None, :]
    return q, k, v, {"mask": mask, "causal": causal, "scale": scale}


@reference("routed")
def routed(q, k, v, *, centroids, causal=None, scale=None) -> tuple[np.ndarray, np.ndarray]:
    """Clause ``routed``: ``(out, lse)`` of attention over same-cluster keys."""
    q, k, v, options = problem(q, k, v, centroids=centroids, causal=causal, scale=scale)
    return dense(q, k, v, return_lse=True, **options)


def _validate(q, k, centroids):
    values = np.zeros(np.shape(k)[:3] + (1,))
    checked = prepare(q, k, values)  # shapes, dtypes and GQA as sdpa checks them
    centroids = check.float_array("centroids", centroids, ndim=3)
    h_q, d = checked.q.shape[1], checked.q.shape[3]
    if centroids.shape[0] != h_q or centroids.shape[2] != d or centroids.shape[1] < 1:
        raise ValueError(
            f"centroids must have shape (H_q, C, D_qk) = ({h_q}, C, {d}) with C >= 1; got {centroids.shape}"
        )
    if not np.isfinite(centroids).all() or (np.linalg.norm(centroids, axis=-1) == 0).any():
        raise ValueError("centroids must be finite and nonzero (each row is normalised)")
    return checked.q, checked.k, centroids
