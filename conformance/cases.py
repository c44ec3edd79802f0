"""Test cases as small frozen descriptions; the arrays are made from a seed.

Hypothesis draws and shrinks the description (shapes, options, seed); :meth:`SdpaCase.inputs`
turns it into arrays already rounded to the target dtype, so the reference sees exactly the
values the kernel saw. A case prints as one line that states its shape and options.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from attnspec.conformance.dtypes import HUGE_SCORE, LARGE_MAGNITUDE, rounded


@dataclass(frozen=True)
class SdpaCase:
    """One ``sdpa`` call: shapes, options and how to fill the arrays."""

    batch: int = 1
    h_q: int = 1
    h_kv: int = 1
    n_q: int = 1
    n_k: int = 1
    d_qk: int = 8
    d_v: int = 8
    seed: int = 0
    magnitude: str = "unit"  # "unit", "large" (scores far past exp's overflow point) or "huge" (HUGE_SCORE)
    scale: float | None = None
    causal: str | None = None
    window: tuple[int, int] | None = None
    window_align: str | None = None  # None (bottom-right, sdpa.window) or "top_left" (sdpa.window.top_left)
    mask: str | None = None  # None, "full", "per_key" (B, 1, 1, N_k) or "per_head" (1, H_q, N_q, N_k)
    mask_density: float = 0.7
    bias: str | None = None  # None, "full", "per_key", "per_head"
    bias_neg_inf: bool = False
    softcap: float | None = None
    alibi: bool = False
    alibi_per_batch: bool = False  # slopes (B, H_q) instead of (H_q,)
    q_lens: tuple[int, ...] | None = None
    kv_lens: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        """Valid Python that rebuilds the case: the shape always, other fields where not default."""
        defaults = SdpaCase()
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for i, f in enumerate(fields(self))
            if i < 8 or getattr(self, f.name) != getattr(defaults, f.name)
        ]
        return f"SdpaCase({', '.join(shown)})"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis prints falsifying examples this way
        printer.text(repr(self))

    def with_(self, **changes) -> SdpaCase:
        return replace(self, **changes)

    def inputs(self, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """``(q, k, v, options)``: arrays in ``dtype`` (bias too), masks bool, lengths int32."""
        rng = np.random.default_rng(self.seed)
        mag = LARGE_MAGNITUDE[dtype] if self.magnitude == "large" else 1.0
        q = rounded(rng.standard_normal((self.batch, self.h_q, self.n_q, self.d_qk)) * mag, dtype)
        k = rounded(rng.standard_normal((self.batch, self.h_kv, self.n_k, self.d_qk)) * mag, dtype)
        if self.magnitude == "huge":
            q, k = self._huge_scores(q, k, rng, dtype)
        v = rounded(rng.standard_normal((self.batch, self.h_kv, self.n_k, self.d_v)), dtype)
        options: dict = {}
        for name in ("scale", "causal", "window", "window_align", "softcap"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        if self.mask is not None:
            options["mask"] = rng.random(self._broadcast_shape(self.mask)) < self.mask_density
        if self.bias is not None:
            bias = rng.standard_normal(self._broadcast_shape(self.bias)) * 2.0
            if self.bias_neg_inf:
                bias = np.where(rng.random(bias.shape) < 0.3, -np.inf, bias)
            options["bias"] = rounded(bias, dtype)
        if self.alibi:
            slopes = 2.0 ** -rng.uniform(0.5, 8.0, size=(self.batch, self.h_q) if self.alibi_per_batch else self.h_q)
            options["alibi_slopes"] = slopes.astype(np.float64 if dtype == "float64" else np.float32)
        if self.q_lens is not None:
            options["q_lens"] = np.asarray(self.q_lens, dtype=np.int32)
        if self.kv_lens is not None:
            options["kv_lens"] = np.asarray(self.kv_lens, dtype=np.int32)
        return q, k, v, options

    def _huge_scores(self, q, k, rng, dtype: str):
        """Every score of query row ``i`` is ``sign(i) * M`` plus an O(1) part: feature 0 of every
        query and key carries ``sqrt(M / scale)`` (the row's sign on the query), the other features
        keep their unit draws, and the cross terms are zero."""
        scale = self.scale if self.scale is not None else 1.0 / np.sqrt(self.d_qk)
        if scale == 0:
            return q, k  # every score is 0 whatever q and k hold
        target = HUGE_SCORE[dtype]
        if dtype == "float16":  # q.k before scaling must stay finite in float16's naive evaluation
            target = min(target, 0.25 * 65504.0 * abs(scale))
        a = np.sqrt(target / abs(scale))
        sign = rng.choice([-1.0, 1.0], size=(self.batch, self.h_q, self.n_q)) * np.sign(scale)
        q, k = q.astype(np.float64), k.astype(np.float64)
        q[..., 0], k[..., 0] = sign * a, a
        return rounded(q, dtype), rounded(k, dtype)

    def _broadcast_shape(self, form: str) -> tuple[int, ...]:
        return {
            "full": (self.batch, self.h_q, self.n_q, self.n_k),
            "per_key": (self.batch, 1, 1, self.n_k),
            "per_head": (1, self.h_q, self.n_q, self.n_k),
        }[form]
