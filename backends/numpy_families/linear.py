"""The ``numpy`` backend's operations of :mod:`attnspec.linear`."""

from __future__ import annotations

import numpy as np

from attnspec.reference import linear, performer


class LinearOps:
    """Mixin of :class:`~attnspec.backends.numpy_backend.NumpyBackend`."""

    def linear_attention(self, q, k, v, **kwargs):
        result = linear.linear_attention(q, k, v, **kwargs)
        if isinstance(result, tuple):
            return tuple(np.asarray(r).astype(q.dtype) for r in result)
        return result.astype(q.dtype)

    def efficient_attention(self, q, k, v):
        return linear.efficient_attention(q, k, v).astype(q.dtype)

    def performer_features(self, x, projection):
        return performer.performer_features(x, projection).astype(x.dtype)

    def orthogonal_projection(self, gaussian_blocks, norms):
        return performer.orthogonal_projection(gaussian_blocks, norms).astype(gaussian_blocks.dtype)

    def performer(self, q, k, v, *, projection, **kwargs):
        return performer.performer(q, k, v, projection=projection, **kwargs).astype(q.dtype)
