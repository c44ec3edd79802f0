"""Cases and strategies for the linear-attention and Performer conformance tests.

Conditioning is judged per case, not by filtering inputs (they are standard normal): the bounds
(:func:`attnspec.conformance.bounds.linear_bounds` and the Performer's) measure each case's scale
and its sensitivity to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
from hypothesis import strategies as st

from attnspec.conformance.calls import call_unguarded
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.strategies import block_sizes, declares, lengths
from attnspec.conformance.target import current
from attnspec.contract import Unsupported
from attnspec.reference import linear

DIMS = (1, 2, 3, 8, 16, 31, 32)
MAX_LEN = 129


@dataclass(frozen=True)
class LinearCase:
    """One ``linear_attention`` call: shapes, options, and how to fill the arrays."""

    batch: int = 1
    heads: int = 1
    n_q: int = 1
    n_k: int = 1
    d_qk: int = 8
    d_v: int = 8
    seed: int = 0
    feature_map: str = "elu+1"
    causal: bool = False
    normalize: bool = True
    scale: float = 1.0
    eps: float = 0.0
    initial_state: bool = False  # S0 of 5 earlier tokens
    initial_normalizer: bool = False  # z0 of the same 5 tokens; either may be given without the other
    dead: bool = False  # every third query row and the first key made <= 0: relu rows with den = 0

    def __repr__(self) -> str:
        """Valid Python that rebuilds the case: the shape always, other fields where not default."""
        defaults = LinearCase()
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for i, f in enumerate(fields(self))
            if i < 7 or getattr(self, f.name) != getattr(defaults, f.name)
        ]
        return f"LinearCase({', '.join(shown)})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))

    def with_(self, **changes) -> LinearCase:
        return replace(self, **changes)

    def options(self) -> dict:
        return dict(
            feature_map=self.feature_map, causal=self.causal, normalize=self.normalize, scale=self.scale, eps=self.eps
        )

    def inputs(self, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """``(q, k, v, state)``: arrays in ``dtype``; ``state`` holds ``initial_state`` and/or
        ``initial_normalizer`` (float32 for 16-bit dtypes), those the case names."""
        rng = np.random.default_rng(self.seed)
        q = rng.standard_normal((self.batch, self.heads, self.n_q, self.d_qk))
        k = rng.standard_normal((self.batch, self.heads, self.n_k, self.d_qk))
        v = rng.standard_normal((self.batch, self.heads, self.n_k, self.d_v))
        if self.dead:
            q[:, :, ::3] = -np.abs(q[:, :, ::3])
            k[:, :, 0] = -np.abs(k[:, :, 0])
        state: dict = {}
        if self.initial_state or self.initial_normalizer:
            k_prev = linear.phi(rng.standard_normal((self.batch, self.heads, 5, self.d_qk)), self.feature_map)
            v_prev = rng.standard_normal((self.batch, self.heads, 5, self.d_v))
            state_dtype = dtype if dtype in ("float64", "float32") else "float32"
            if self.initial_state:
                state["initial_state"] = rounded(np.swapaxes(k_prev, -1, -2) @ v_prev, state_dtype)
            if self.initial_normalizer:
                state["initial_normalizer"] = rounded(k_prev.sum(axis=-2), state_dtype)
        return rounded(q, dtype), rounded(k, dtype), rounded(v, dtype), state


def dims() -> st.SearchStrategy[int]:
    return st.deferred(lambda: st.sampled_from([d for d in DIMS if d <= (current().backend.max_head_dim or d)]))


@st.composite
def linear_cases(
    draw,
    *,
    causal: bool | None = None,
    feature_maps=linear.FEATURE_MAPS,
    normalize: bool | None = None,
    state: bool | None = None,
    dead: bool | None = None,
    max_len: int = MAX_LEN,
    scales=(1.0, 1.0, 0.125, 3.0),
) -> LinearCase:
    """A case with the named options; ``None`` draws them (``state``: only if the backend declares
    ``linear.state``; with a state, ``S0``, ``z0`` or both). ``identity`` is always unnormalised."""
    feature_map = draw(st.sampled_from(feature_maps))
    if state is None:
        state = declares("linear.state") and draw(st.booleans())
    causal = draw(st.booleans()) if causal is None else causal
    n_q = draw(lengths(max_len))
    n_k = n_q if causal else draw(lengths(max_len))
    d_qk = draw(dims())
    if normalize is None:
        normalize = draw(st.sampled_from([True, True, False]))
    normalize = normalize and feature_map in linear.NONNEGATIVE_MAPS
    # (S0, z0), z0 alone, and S0 alone where unnormalised (flash-linear-attention's use). Normalised,
    # an S0 without its z0 is not a carried sum: |out| reaches |f_q S0| / (den + eps), unbounded as
    # den -> 0 (relu rows, eps = 1e-6), and 16-bit dtypes cannot hold it.
    pairs = [(True, True), (False, True)] + ([] if normalize else [(True, False)])
    carried = draw(st.sampled_from(pairs)) if state else (False, False)
    return LinearCase(
        batch=draw(st.integers(1, 2)),
        heads=draw(st.sampled_from([1, 3])),
        n_q=n_q,
        n_k=n_k,
        d_qk=d_qk,
        d_v=draw(st.one_of(st.just(d_qk), dims())),
        seed=draw(st.integers(0, 2**32 - 1)),
        feature_map=feature_map,
        causal=causal,
        normalize=normalize,
        scale=draw(st.sampled_from(scales)),
        eps=draw(st.sampled_from([0.0, 0.0, 1e-6, 0.5])) if normalize else 0.0,
        initial_state=carried[0],
        initial_normalizer=carried[1],
        dead=feature_map == "relu" and (draw(st.booleans()) if dead is None else dead),
    )


def forms(n: int) -> st.SearchStrategy[tuple[str, int | None]]:
    """``(form, chunk_size)``: the three forms, chunks of 1, of sizes that do not divide ``n``, and ``>= n``."""
    return st.one_of(
        st.sampled_from([("parallel", None), ("recurrent", None)]), block_sizes(n).map(lambda c: ("chunked", c))
    )


def try_call(op: str, *args, **kwargs):
    """``backend.<op>`` as NumPy, or None where the backend declines this one call (``Unsupported``)."""
    backend = current().backend
    try:
        result = call_unguarded(op, *args, **kwargs)
    except Unsupported:
        return None
    return tuple(backend.to_numpy(r) for r in result) if isinstance(result, tuple) else backend.to_numpy(result)
