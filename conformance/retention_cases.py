"""Retention cases and their strategy (the bound is :func:`attnspec.conformance.bounds.retention_bounds`).

A :class:`RetentionCase` prints as valid Python and makes its arrays from a seed, already
rounded to the dtype under test, so a failure reproduces from its message. The decays are host
values of their own dtype (:func:`gamma_dtype`), never rounded to a 16-bit input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from hypothesis import strategies as st

from attnspec.conformance.dtypes import rounded
from attnspec.conformance.strategies import lengths
from attnspec.conformance.target import current
from attnspec.reference.retention import FORMS

#: Decays at the edges: none kept, underflow within a few steps, the paper's first heads, none lost.
GAMMAS = (0.0, 1e-3, 0.5, 0.9, 0.96875, 1 - 2.0**-9, 1.0)
DIMS = (1, 3, 8, 16, 32)


@dataclass(frozen=True)
class RetentionCase:
    """One ``retention`` call: shapes, decays, form, and the seed of the arrays."""

    batch: int = 1
    heads: int = 1
    n: int = 1
    d_k: int = 8
    d_v: int = 8
    gammas: tuple[float, ...] = (0.9,)
    form: str = "parallel"
    chunk_size: int | None = None
    scale: float | None = None
    initial_state: bool = False
    seed: int = 0

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis prints falsifying examples this way
        printer.text(repr(self))

    def with_(self, **changes) -> RetentionCase:
        return replace(self, **changes)

    def inputs(self, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """``(q, k, v, kwargs)`` in ``dtype``; ``kwargs`` holds gammas, scale, initial_state, form, chunk_size."""
        rng = np.random.default_rng(self.seed)
        q = rounded(rng.standard_normal((self.batch, self.heads, self.n, self.d_k)), dtype)
        k = rounded(rng.standard_normal((self.batch, self.heads, self.n, self.d_k)), dtype)
        v = rounded(rng.standard_normal((self.batch, self.heads, self.n, self.d_v)), dtype)
        state = rng.standard_normal((self.batch, self.heads, self.d_k, self.d_v))
        kwargs = dict(
            gammas=np.asarray(self.gammas, dtype=gamma_dtype(dtype)),
            scale=self.scale,
            initial_state=rounded(state, dtype) if self.initial_state else None,
            form=self.form,
            chunk_size=self.chunk_size,
        )
        return q, k, v, kwargs


def gamma_dtype(dtype: str) -> type:
    """The dtype of ``gammas`` passed with inputs of ``dtype``: float64 with float64, else float32.

    Clause ``retention.parallel``: the decays are float32 or float64 whatever the input dtype. In
    bfloat16 every decay from ``1 - 2^-9`` up would round to 1 (the paper's heads 4 and above), in
    float16 from ``1 - 2^-12`` up: a test with rounded decays could not see a kernel that loses them.
    """
    return np.float64 if dtype == "float64" else np.float32


def chunk_sizes(n: int) -> st.SearchStrategy[int]:
    """1, small odd sizes, powers of two, and sizes that do not divide ``n`` or exceed it."""
    return st.sampled_from(sorted({1, 2, 3, 5, 16, 64, max(1, n - 1), n + 1}))


@st.composite
def retention_cases(draw, *, form: str | None = "parallel", initial_state: bool = False, max_len: int | None = None):
    """A case of ``form`` (None: any form); chunkwise cases draw a chunk size against the drawn length."""
    form = form or draw(st.sampled_from(FORMS))
    top = current().backend.max_head_dim or max(DIMS)
    dims = st.sampled_from([d for d in DIMS if d <= top])
    heads = draw(st.integers(1, 3))
    n = draw(lengths(max_len))  # N = 0 is a pinned example of the tests
    d_k = draw(dims)
    gamma = st.one_of(st.sampled_from(GAMMAS), st.floats(0.0, 1.0))
    return RetentionCase(
        batch=draw(st.integers(1, 2)),
        heads=heads,
        n=n,
        d_k=d_k,
        d_v=draw(st.one_of(st.just(d_k), dims)),
        gammas=tuple(draw(st.lists(gamma, min_size=heads, max_size=heads))),
        form=form,
        chunk_size=draw(chunk_sizes(n)) if form == "chunkwise" else None,
        scale=draw(st.sampled_from([None, 0.3, 1.7])),
        initial_state=initial_state,
        seed=draw(st.integers(0, 2**32 - 1)),
    )
