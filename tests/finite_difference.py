"""Central finite differences, the float64 check of the references' closed-form gradients."""

from __future__ import annotations

import numpy as np


def central_difference(x: np.ndarray, loss, step: float = 1e-6) -> np.ndarray:
    """``d loss / d x`` element by element: ``(loss(x + h) - loss(x - h)) / 2h``, ``x`` changed in
    place and restored (``loss`` reads it)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + step
        up = loss()
        x[idx] = old - step
        down = loss()
        x[idx] = old
        grad[idx] = (up - down) / (2 * step)
    return grad
