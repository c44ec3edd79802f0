"""ALiBi: per-head slopes and the linear bias tables they define."""

from __future__ import annotations

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference

ALIBI_FORMS = ("symmetric", "causal")


def _power_of_two_slopes(n: int) -> np.ndarray:
    """``2 ** (-8 (h + 1) / n)`` for ``h = 0 .. n-1``: the geometric series for ``n = 2^k``."""
    return np.exp2(-8.0 * np.arange(1, n + 1) / n)


@reference("alibi_slopes")
def alibi_slopes(num_heads) -> np.ndarray:
    """Slopes ``(H,)`` by the paper's recipe, for any head count. Clause ``alibi.slopes``."""
    n = check.integer("num_heads", num_heads, low=1)
    check.fits_in_memory("alibi_slopes", ("slopes (num_heads,)", (n,), 8))
    m = 1 << (n.bit_length() - 1)  # the largest power of two <= n
    if m == n:
        return _power_of_two_slopes(n)
    # Non-power of two: the m-head slopes, then every other slope of the 2m-head series,
    # which interleaves between them, rather than a plain geometric series over n.
    extra = _power_of_two_slopes(2 * m)[0::2][: n - m]
    return np.concatenate([_power_of_two_slopes(m), extra])


@reference("alibi_bias")
def alibi_bias(slopes, n_q, n_k, *, form="symmetric") -> np.ndarray:
    """Bias ``(H, N_q, N_k)`` with bottom-right offset ``N_k - N_q``. Clause ``alibi.bias``.

    ``form="symmetric"``: ``-slope * |i + offset - j|``;
    ``form="causal"``: ``slope * (j - i - offset)``.
    """
    slopes = check.float_array("slopes", slopes, ndim=1)
    n_q = check.integer("n_q", n_q, low=0)
    n_k = check.integer("n_k", n_k, low=0)
    check.choice("form", form, ALIBI_FORMS)
    check.fits_in_memory(
        "alibi_bias", ("distances (n_q, n_k)", (n_q, n_k), 8), ("bias (H, n_q, n_k)", (slopes.size, n_q, n_k), 8)
    )
    offset = n_k - n_q
    # Integer distances keep the table exact; negating before the product avoids -0.0.
    dist = np.arange(n_k)[None, :] - np.arange(n_q)[:, None] - offset
    if form == "symmetric":
        dist = -np.abs(dist)
    return slopes[:, None, None] * dist[None, :, :]
