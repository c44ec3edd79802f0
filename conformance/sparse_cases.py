"""Cases and strategies for the sparse patterns (spec section :mod:`attnspec.sparse`).

A :class:`SparseCase` is one ``sparse`` call described by small values: the shapes, a seed, and
the pattern's parameters as ``(name, value)`` pairs. Array parameters are written compactly
(positions, lengths, a density) and built by :meth:`SparseCase.pattern_params`, random ones
from the case's seed, so the one-line repr rebuilds the call exactly.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
from hypothesis import strategies as st

from attnspec.clauses import attach
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.strategies import declares, head_pairs, lengths
from attnspec.conformance.target import current
from attnspec.reference import patterns

HEAD_DIMS = (1, 3, 8, 16, 32)


@dataclass(frozen=True)
class SparseCase:
    """One ``sparse`` call. ``params`` entries are passed as given, except these encodings:

    - ``global_tokens``: positions, a tuple (shared, 1-D) or a tuple per batch item (2-D);
    - ``random``: ``(heads, r)``, a ``random_blocks`` array drawn from the seed;
    - ``layout``: ``(heads, density)``, a block layout drawn from the seed;
    - ``document_lengths``: lengths of consecutive documents (0 = empty), shared or per batch
      item, with ``labels`` "runs" (ids 0, 1, 2, ...) or "alternating" (run index mod 2, so a
      document spans several runs);
    - tuples of integers (``dilation``, ``global_blocks``, ``prefix_lens``) become int arrays.
    """

    pattern: str
    batch: int = 1
    h_q: int = 1
    h_kv: int = 1
    n_q: int = 1
    n_k: int = 1
    d_qk: int = 8
    d_v: int = 8
    seed: int = 0
    magnitude: str = "unit"
    scale: float | None = None
    params: tuple = ()

    def __repr__(self) -> str:
        defaults = SparseCase("")
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for i, f in enumerate(fields(self))
            if i < 9 or getattr(self, f.name) != getattr(defaults, f.name)
        ]
        return f"SparseCase({', '.join(shown)})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))

    def with_(self, **changes) -> SparseCase:
        return replace(self, **changes)

    @property
    def causal(self) -> bool:
        """Whether the pattern is causal: no row depends on later keys (prefix-LM: after its prefix)."""
        return CASES[self.pattern].causal or dict(self.params).get("causal", False)

    def inputs(self, dtype: str):
        """``(q, k, v, kwargs)``: arrays rounded to ``dtype``; ``kwargs`` holds pattern, scale and parameters."""
        shape = SdpaCase(
            batch=self.batch,
            h_q=self.h_q,
            h_kv=self.h_kv,
            n_q=self.n_q,
            n_k=self.n_k,
            d_qk=self.d_qk,
            d_v=self.d_v,
            seed=self.seed,
            magnitude=self.magnitude,
        )
        q, k, v, _ = shape.inputs(dtype)
        return q, k, v, {"pattern": self.pattern, "scale": self.scale, **self.pattern_params()}

    def pattern_params(self) -> dict:
        rng = np.random.default_rng([self.seed, 1])
        params = dict(self.params)
        out = {}
        for name, value in params.items():
            if name == "global_tokens":
                out[name] = _flags(value, self.n_k)
            elif name == "random":
                heads, r = value
                n_blocks = -(-self.n_k // params["block"])
                out["random_blocks"] = rng.integers(0, max(n_blocks, 1), size=(heads, n_blocks, r))
            elif name == "layout":
                heads, density = value
                rows, cols = -(-self.n_k // params["block_q"]), -(-self.n_k // params["block_k"])
                out[name] = rng.random((heads, rows, cols)) < density
            elif name == "document_lengths":
                out["document_ids"] = _document_ids(value, params.get("labels", "runs"))
            elif name == "labels":
                continue
            elif isinstance(value, tuple):
                out[name] = np.asarray(value, dtype=np.int64)
            else:
                out[name] = value
        return out


def _flags(positions: tuple, n: int) -> np.ndarray:
    nested = bool(positions) and isinstance(positions[0], tuple)
    rows = positions if nested else (positions,)
    flags = np.zeros((len(rows), n), dtype=bool)
    for b, row in enumerate(rows):
        flags[b, list(row)] = True
    return flags if nested else flags[0]


def _document_ids(lengths: tuple, labels: str) -> np.ndarray:
    nested = bool(lengths) and isinstance(lengths[0], tuple)
    rows = [np.repeat(np.arange(len(row)), row) for row in (lengths if nested else (lengths,))]
    ids = np.stack(rows) % 2 if labels == "alternating" else np.stack(rows)
    return ids if nested else ids[0]


# ---- strategies -----------------------------------------------------------------------------------


@st.composite
def sparse_cases(draw, pattern: str, *, max_len: int = 96, shorter_queries: bool = False) -> SparseCase:
    """A case of ``pattern`` with shapes biased to kernel edges; ``shorter_queries``: ``N_q < N_k``."""
    gqa = declares("sdpa.gqa")
    h_q, h_kv = draw(head_pairs(gqa))
    n_k = draw(lengths(max_len).filter(lambda n: n >= 2) if shorter_queries else lengths(max_len))
    n_q = draw(st.integers(1, n_k - 1) if shorter_queries else st.one_of(st.just(n_k), st.integers(1, n_k)))
    top = current().backend.max_head_dim or max(HEAD_DIMS)
    dims = st.sampled_from([d for d in HEAD_DIMS if d <= top])
    d_qk = draw(dims)
    case = SparseCase(
        pattern,
        batch=draw(st.integers(1, 2)),
        h_q=h_q,
        h_kv=h_kv,
        n_q=n_q,
        n_k=n_k,
        d_qk=d_qk,
        d_v=draw(st.one_of(st.just(d_qk), dims)),
        seed=draw(st.integers(0, 2**32 - 1)),
        magnitude=draw(st.sampled_from(("unit", "large"))),
        scale=draw(st.sampled_from([None, 0.3])) if declares("sdpa.scale") else None,
    )
    return case.with_(params=draw(CASES[pattern].params(case)))


def _sides() -> st.SearchStrategy[int]:
    return st.sampled_from([0, 1, 2, 3, 7, 16, 63])


def _sizes(n: int) -> st.SearchStrategy[int]:
    """Block, stride and chunk sizes: 1, small odd ones, powers of two, and ones that do not divide n."""
    return st.sampled_from(sorted({1, 2, 3, 4, 5, 8, 16, 32, max(1, n - 1), n + 1}))


def _positions(n: int, size: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Up to ``size`` distinct positions in ``0 .. n - 1``, often the first and the last."""
    one = st.one_of(st.sampled_from(sorted({0, n - 1})), st.integers(0, n - 1))
    return st.lists(one, max_size=size, unique=True).map(lambda xs: tuple(sorted(xs)))


def _per_batch(case: SparseCase, strategy: st.SearchStrategy) -> st.SearchStrategy:
    """One value for every batch item (a tuple of them), or one shared value."""
    per_item = st.tuples(*[strategy] * case.batch)
    return st.one_of(strategy, per_item) if case.batch > 1 else strategy


# ---- the patterns' cases: each registers itself with pattern_cases ------------------------------


@dataclass(frozen=True)
class PatternCases:
    """How the suite checks one pattern: its parameter strategy, its pinned edges, its budget.

    ``params(case)`` draws the ``params`` of a case with the given shapes; ``edges`` are the sharp
    cases run before the drawn ones, and ``edges[probe]`` is pinned in the probe of invisible keys;
    ``budget(n, heads)``, for a pattern with a fixed budget of keys per query (``sparse.cost``),
    gives its parameters at length ``n``, measured by the memory test and the scaling report;
    ``causal``: no row depends on later keys whatever the parameters. The strategy's docstring
    says what the pattern's test checks.
    """

    params: Callable[[SparseCase], st.SearchStrategy[tuple]]
    edges: tuple[SparseCase, ...]
    probe: int = 0
    budget: Callable[[int, int], dict] | None = None
    causal: bool = False
    doc: str = ""


#: Pattern name -> its cases, in the order registered.
CASES: dict[str, PatternCases] = {}


def pattern_cases(clause_id: str, *, edges, probe: int = 0, budget=None, causal: bool = False) -> Callable:
    """Register the decorated parameter strategy (a function ``(draw, case)``) of pattern ``clause_id``."""

    def register(draw_params):
        name = clause_id.removeprefix("sparse.")
        if name not in patterns_with_builders():
            raise ValueError(
                f"cases for {clause_id!r}, which has no reference builder (attnspec.reference.sparse.builds)"
            )
        cases = PatternCases(
            st.composite(draw_params), tuple(edges), probe, budget, causal, inspect.getdoc(draw_params) or ""
        )
        CASES[name] = cases
        attach(clause_id, "cases", cases)
        return draw_params

    return register


def patterns_with_builders() -> tuple[str, ...]:
    from attnspec.reference.sparse import BUILDERS

    return tuple(BUILDERS)


@pattern_cases(
    "sparse.dilated",
    probe=1,
    budget=lambda n, heads: dict(window=8, dilation=2),
    edges=[
        SparseCase("dilated", n_q=1, n_k=1, params=(("window", 2),)),
        SparseCase(
            "dilated", h_q=2, h_kv=1, n_q=5, n_k=37, params=(("window", 3), ("dilation", (1, 3)), ("causal", True))
        ),
        SparseCase("dilated", n_q=17, n_k=17, params=(("window", 2), ("dilation", 4))),
    ],
)
def _dilated(draw, case):
    """Keys d apart within w steps on each side (per-head d), causal or not."""
    per_head = st.tuples(*[st.integers(1, 4)] * case.h_q)
    dilation = draw(st.one_of(st.sampled_from([1, 2, 3, 7]), per_head))
    return (("window", draw(_sides())), ("dilation", dilation), ("causal", draw(st.booleans())))


def _longformer_budget(n: int, heads: int) -> dict:
    return dict(window=16, global_tokens=np.isin(np.arange(n), [0, n - 1]))


@pattern_cases(
    "sparse.longformer",
    budget=_longformer_budget,
    edges=[
        SparseCase("longformer", n_q=20, n_k=20, params=(("window", 1), ("global_tokens", (19,)))),
        SparseCase("longformer", batch=2, n_q=3, n_k=21, params=(("window", 0), ("global_tokens", ((0,), (20,))))),
    ],
)
def _longformer(draw, case):
    """Window plus global tokens in both directions, also a global token at the last position."""
    return (("window", draw(_sides())), ("global_tokens", draw(_per_batch(case, _positions(case.n_k, 4)))))


def _bigbird_budget(n: int, heads: int) -> dict:
    n_blocks = math.ceil(n / 16)
    return dict(
        block=16,
        window_blocks=1,
        global_blocks=np.array([0, n_blocks - 1]),
        random_blocks=patterns.bigbird_random_blocks(n_blocks, 2, heads=heads, seed=0),
    )


@pattern_cases(
    "sparse.bigbird",
    budget=_bigbird_budget,
    edges=[
        SparseCase(
            "bigbird",
            h_q=2,
            h_kv=2,
            n_q=37,
            n_k=37,
            params=(("block", 8), ("window_blocks", 1), ("global_blocks", (0, 4)), ("random", (2, 2))),
        ),
        SparseCase("bigbird", n_q=1, n_k=1, params=(("block", 4), ("window_blocks", 0))),
        SparseCase("bigbird", n_q=30, n_k=30, params=(("block", 3), ("window_blocks", 0), ("random", (1, 1)))),
        # BigBird-ITC as Google's code and Hugging Face's module compute it (window 1, the first and last
        # block global): drawn random blocks that repeat window blocks, and random blocks that all repeat
        # global block 0 (the plan HF's module draws in eval mode). Repeats change nothing.
        SparseCase(
            "bigbird",
            h_q=2,
            h_kv=2,
            n_q=32,
            n_k=32,
            params=(("block", 4), ("window_blocks", 1), ("global_blocks", (0, 7)), ("random", (2, 1))),
        ),
        SparseCase(
            "bigbird",
            n_q=40,
            n_k=40,
            params=(
                ("block", 4),
                ("window_blocks", 1),
                ("global_blocks", (0, 9)),
                ("random_blocks", (((0, 0),) * 10,)),
            ),
        ),
    ],
)
def _bigbird(draw, case):
    """Block window, global and per-head random blocks; N not a multiple of the block."""
    block = draw(_sizes(case.n_k))
    n_blocks = -(-case.n_k // block)
    global_blocks = draw(_positions(n_blocks, 2))
    random = (draw(st.sampled_from([1, case.h_q])), draw(st.sampled_from([0, 1, 2, 3])))
    return (
        ("block", block),
        ("window_blocks", draw(st.sampled_from([0, 1, 2]))),
        ("global_blocks", global_blocks),
        ("random", random),
    )


@pattern_cases(
    "sparse.strided",
    causal=True,
    edges=[
        SparseCase("strided", n_q=20, n_k=20, params=(("stride", 4), ("factor", "a1"))),
        SparseCase("strided", n_q=4, n_k=29, params=(("stride", 5),)),
    ],
)
def _strided(draw, case):
    """A1 holds the previous l keys and itself; A2 every l-th earlier key; causal."""
    return (("stride", draw(_sizes(case.n_k))), ("factor", draw(st.sampled_from(patterns.FACTORS))))


@pattern_cases(
    "sparse.fixed",
    causal=True,
    edges=[
        SparseCase("fixed", n_q=24, n_k=24, params=(("stride", 6), ("summary", 2))),
        SparseCase("fixed", n_q=1, n_k=1, params=(("stride", 3), ("summary", 3), ("factor", "a2"))),
    ],
)
def _fixed(draw, case):
    """A1 the query's own block; A2 the last c positions of every block; causal."""
    stride = draw(_sizes(case.n_k))
    summary = draw(st.one_of(st.sampled_from(sorted({1, stride})), st.integers(1, stride)))
    return (("stride", stride), ("summary", summary), ("factor", draw(st.sampled_from(patterns.FACTORS))))


def _block_sparse_budget(n: int, heads: int) -> dict:
    blocks = np.arange(math.ceil(n / 32))
    band = np.abs(blocks[:, None] - blocks[None, :]) <= 1
    return dict(layout=band[None], block_q=32, block_k=32)


@pattern_cases(
    "sparse.block_sparse",
    budget=_block_sparse_budget,
    edges=[
        SparseCase(
            "block_sparse",
            h_q=2,
            h_kv=2,
            n_q=37,
            n_k=37,
            params=(("block_q", 16), ("block_k", 5), ("layout", (2, 0.5))),
        ),
        SparseCase("block_sparse", n_q=1, n_k=1, params=(("block_q", 64), ("block_k", 64), ("layout", (1, 1.0)))),
        SparseCase("block_sparse", n_q=9, n_k=33, params=(("block_q", 4), ("block_k", 4), ("layout", (1, 0.3)))),
    ],
)
def _block_sparse(draw, case):
    """Per-head layouts of block_q x block_k tiles, block sizes that do not divide N."""
    layout = (draw(st.sampled_from([1, case.h_q])), draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])))
    return (("block_q", draw(_sizes(case.n_k))), ("block_k", draw(_sizes(case.n_k))), ("layout", layout))


@pattern_cases(
    "sparse.prefix_lm",
    probe=1,
    causal=True,
    edges=[
        SparseCase("prefix_lm", batch=2, n_q=13, n_k=13, params=(("prefix_lens", (0, 13)),)),
        SparseCase("prefix_lm", batch=2, n_q=4, n_k=13, params=(("prefix_lens", (5, 12)),)),
    ],
)
def _prefix_lm(draw, case):
    """Bidirectional inside the per-batch prefix (exclusive of position prefix_lens), causal after."""
    edge = st.sampled_from(sorted({0, 1, case.n_k - 1, case.n_k}))
    lens = st.lists(st.one_of(edge, st.integers(0, case.n_k)), min_size=case.batch, max_size=case.batch)
    return (("prefix_lens", tuple(draw(lens))),)


@pattern_cases(
    "sparse.document",
    probe=1,
    budget=lambda n, heads: dict(document_ids=np.arange(n) // 64, causal=True),
    edges=[
        SparseCase("document", n_q=9, n_k=9, params=(("document_lengths", (3, 0, 5, 1)), ("causal", True))),
        SparseCase("document", batch=2, n_q=3, n_k=9, params=(("document_lengths", ((0, 9), (4, 4, 1))),)),
    ],
)
def _document(draw, case):
    """Packed documents, empty ones and documents spanning several runs included."""
    cuts = st.lists(st.integers(0, case.n_k), max_size=5).map(sorted)
    lengths = cuts.map(lambda c: tuple(int(x) for x in np.diff([0, *c, case.n_k])))  # zeros: empty documents
    return (
        ("document_lengths", draw(_per_batch(case, lengths))),
        ("labels", draw(st.sampled_from(["runs", "alternating"]))),
        ("causal", draw(st.booleans())),
    )


@pattern_cases(
    "sparse.chunked",
    probe=1,
    budget=lambda n, heads: dict(chunk=64, causal=True),
    edges=[
        SparseCase("chunked", n_q=37, n_k=37, params=(("chunk", 8), ("causal", True))),
        SparseCase("chunked", n_q=3, n_k=17, params=(("chunk", 8),)),
        SparseCase("chunked", n_q=1, n_k=1, params=(("chunk", 1), ("causal", True))),
    ],
)
def _chunked(draw, case):
    """Chunks of absolute positions, also when decoding the last rows only."""
    return (("chunk", draw(_sizes(case.n_k))), ("causal", draw(st.booleans())))


def declared_patterns() -> tuple[str, ...]:
    """The patterns whose clauses (``sparse.<pattern>``) the backend declares; all if it declares none."""
    return tuple(p for p in PATTERNS if declares(f"sparse.{p}")) or PATTERNS


def any_pattern_cases(**options) -> st.SearchStrategy[SparseCase]:
    """A case of any declared pattern (chosen when drawing, once the backend under test is known)."""
    return st.deferred(lambda: st.sampled_from(declared_patterns())).flatmap(lambda p: sparse_cases(p, **options))


#: Derived from the registrations above (a new pattern edits none of these).
PATTERNS = tuple(CASES)
#: Patterns with a fixed budget of keys per query (clause ``sparse.cost``).
BUDGETED = tuple(p for p, cases in CASES.items() if cases.budget is not None)
#: Pinned sharp edges, per pattern: N = 1, lengths that are not a multiple of the block, decoding
#: rows (N_q < N_k), a global token at the last position, an empty document, prefixes 0 and N.
EDGES = {p: list(cases.edges) for p, cases in CASES.items()}


#: Rows without keys beside rows with keys (clause ``sparse``, ``sdpa.fully_masked``): with seed 2
#: head 1's first tile row of the layout is empty, 16 rows of 80 (a check in tests/ keeps it so).
EMPTY_ROWS = SparseCase(
    "block_sparse",
    h_q=2,
    h_kv=1,
    n_q=40,
    n_k=40,
    seed=2,
    params=(("block_q", 16), ("block_k", 8), ("layout", (2, 0.3))),
)


def budgeted_params(pattern: str, n: int, heads: int = 1) -> dict:
    """Parameters of ``pattern`` with a fixed budget of keys per query at length ``n`` (``sparse.cost``)."""
    budget = CASES[pattern].budget if pattern in CASES else None
    if budget is None:
        raise ValueError(f"pattern {pattern!r} has no fixed budget of keys per query")
    return budget(n, heads)
