"""Sparse attention in float64, touching only candidate keys (clauses in :mod:`attnspec.sparse`).

:func:`build` validates a pattern's parameters and returns a :class:`Pattern`: its mask_mod
(:mod:`.patterns`), its extents, and ``candidates(p0, p1)``, a cheap superset of the keys that
queries at positions ``p0 .. p1`` may see, computed from the parameters in time proportional to
its size. :func:`sparse` walks the queries in row tiles, gathers the candidate keys of each tile
and evaluates scores and the mask_mod on ``rows x candidates`` only, so its work follows the
visible pairs, not ``N_q * N_k``. The counted work is returned through ``stats``, a
deterministic cost proxy. :func:`sparse_mask` evaluates the same mask_mod on the whole table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from attnspec import validation as check
from attnspec.clauses import CATALOG, reference
from attnspec.reference import patterns
from attnspec.reference.sdpa import prepare, scores, softmax_average

ROW_TILE = 32


@dataclass(frozen=True)
class Pattern:
    """A validated pattern: ``visible`` over positions, its extents, and its candidate keys."""

    name: str
    params: dict  # normalised parameters, as the factory in :mod:`.patterns` takes them
    mask_mod: Callable
    batch: int  # extents (B_p, H_p), and the parameters that set them (for error messages)
    heads: int
    candidates: Callable[[int, int], np.ndarray]  # (p0, p1) inclusive -> sorted key positions
    batch_from: str = ""
    heads_from: str = ""


@reference("sparse_mask")
def sparse_mask(pattern: str, n_q: int, n_k: int, **params) -> np.ndarray:
    """Clause ``sparse.mask``: the boolean table ``(B_p, H_p, n_q, n_k)`` of ``pattern``."""
    pat = build(pattern, n_q, n_k, **params)
    check.fits_in_memory("sparse_mask", ("table (B_p, H_p, n_q, n_k)", (pat.batch, pat.heads, n_q, n_k), 1))
    return table(pat.mask_mod, pat.batch, pat.heads, n_q, n_k)


def table(mask_mod, batch: int, heads: int, n_q: int, n_k: int) -> np.ndarray:
    """A positions mask_mod evaluated on every (b, h, row, key), rows bottom-right aligned."""
    vis = evaluate(mask_mod, batch, heads, range(n_q), np.arange(n_k), n_k - n_q)
    return np.broadcast_to(vis, (batch, heads, n_q, n_k)).copy()


def evaluate(mask_mod, batch: int, heads: int, rows: range, keys: np.ndarray, offset: int) -> np.ndarray:
    """``mask_mod`` on query rows ``rows`` (positions ``row + offset``) and key positions ``keys``."""
    b = np.arange(batch)[:, None, None, None]
    h = np.arange(heads)[None, :, None, None]
    q_pos = np.arange(rows.start + offset, rows.stop + offset)[None, None, :, None]
    return np.asarray(mask_mod(b, h, q_pos, np.asarray(keys)[None, None, None, :]), dtype=bool)


@reference("sparse")
def sparse(
    q,
    k,
    v,
    *,
    pattern: str,
    scale=None,
    return_lse: bool = False,
    stats: dict | None = None,
    row_tile: int = ROW_TILE,
    **params,
):
    """Clause ``sparse``: attention restricted to ``pattern``, evaluated on candidate keys only.

    If ``stats`` is a dict it receives the counted work: ``score_elements`` (``B * H_q * rows *
    candidates`` summed over row tiles: scores and mask evaluated), ``visible_pairs``,
    ``key_reads`` (``B * H_kv * candidates`` summed: rows of K and V gathered) and ``tiles``.
    """
    row_tile = check.integer("row_tile", row_tile, low=1)
    problem = prepare(q, k, v, scale=scale)
    pat = build(pattern, problem.n_q, problem.n_k, **params)
    _check_extents(pat, problem.batch, problem.h_q)
    b, h_q, h_kv = problem.batch, problem.h_q, problem.h_kv
    out = np.full((b, h_q, problem.n_q, problem.v.shape[-1]), np.nan)  # unwritten rows show as NaN
    lse = np.full((b, h_q, problem.n_q), np.nan)
    work = dict(score_elements=0, visible_pairs=0, key_reads=0, tiles=0)
    offset = problem.n_k - problem.n_q
    for rows, keys in plan(pat, problem.n_q, problem.n_k, row_tile):
        part = replace(problem, k=problem.k[:, :, keys], v=problem.v[:, :, keys])
        s = scores(part, rows, range(len(keys)))
        vis = evaluate(pat.mask_mod, pat.batch, pat.heads, rows, keys, offset)
        out[:, :, rows.start : rows.stop], lse[:, :, rows.start : rows.stop] = softmax_average(s, vis, part.v)
        work["score_elements"] += b * h_q * len(rows) * len(keys)
        work["visible_pairs"] += int(np.broadcast_to(vis, s.shape).sum())
        work["key_reads"] += b * h_kv * len(keys)
        work["tiles"] += 1
    if stats is not None:
        stats.update(work)
    return (out, lse) if return_lse else out


def plan(pat: Pattern, n_q: int, n_k: int, row_tile: int = ROW_TILE) -> Iterator[tuple[range, np.ndarray]]:
    """``(rows, keys)`` per row tile: the query rows and the sorted candidate key positions."""
    offset = n_k - n_q
    for r0 in range(0, n_q, row_tile):
        rows = range(r0, min(r0 + row_tile, n_q))
        yield rows, pat.candidates(rows.start + offset, rows.stop - 1 + offset)


def _check_extents(pat: Pattern, batch: int, heads: int) -> None:
    if pat.batch not in (1, batch):
        raise ValueError(f"{pat.batch_from} has {pat.batch} batch items; q has B = {batch} (expected 1 or B)")
    if pat.heads not in (1, heads):
        raise ValueError(f"{pat.heads_from} has {pat.heads} heads; q has H_q = {heads} (expected 1 or H_q)")


def build(pattern: str, n_q: int, n_k: int, **params) -> Pattern:
    """Validate ``pattern``, the lengths and the parameters; the :class:`Pattern`."""
    check.choice("pattern", pattern, tuple(BUILDERS))
    n_q, n_k = check.integer("n_q", n_q, low=0), check.integer("n_k", n_k, low=0)
    if n_q > n_k:
        raise ValueError(
            f"N_q = {n_q} (n_q, or q.shape[2]) exceeds N_k = {n_k}: sparse patterns align queries "
            "bottom-right (row i is position i + N_k - N_q), so N_q <= N_k"
        )
    builder = BUILDERS[pattern]
    signature = inspect.signature(builder).parameters
    names = [name for name in signature if name != "n_k"]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise TypeError(f"pattern {pattern!r} has no parameter(s) {unknown}; its parameters are {', '.join(names)}")
    missing = [n for n in names if signature[n].default is inspect.Parameter.empty and n not in params]
    if missing:
        raise TypeError(f"pattern {pattern!r} needs parameter(s) {missing}")
    return builder(n_k, **params)


# ---- the patterns: validation, normalised parameters and candidate keys -----------------------

#: Pattern name -> its builder, in the order defined; each builder registers itself with :func:`builds`.
BUILDERS: dict[str, Callable[..., Pattern]] = {}


def builds(clause_id: str) -> Callable:
    """Register the decorated builder as pattern ``NAME`` of clause ``sparse.NAME`` (which must exist)."""

    def register(builder: Callable[..., Pattern]) -> Callable[..., Pattern]:
        if clause_id not in CATALOG or not clause_id.startswith("sparse."):
            raise ValueError(f"builder {builder.__name__} names {clause_id!r}, which is no sparse.* clause")
        BUILDERS[clause_id.removeprefix("sparse.")] = builder
        return builder

    return register


@builds("sparse.dilated")
def _dilated(n_k, *, window, dilation=1, causal=False) -> Pattern:
    window, causal = check.integer("window", window, low=0), _flag("causal", causal)
    dilation = _int_array("dilation", dilation, ndims=(0, 1), low=1).reshape(-1)
    if dilation.size == 0:
        raise ValueError("dilation must be an integer or a non-empty array of shape (H,)")
    offsets = _dilated_offsets(window, dilation, causal, n_k)

    def candidates(p0, p1):
        return _inside(np.unique(np.add.outer(np.arange(p0, p1 + 1), offsets)), n_k)

    params = dict(window=window, dilation=dilation, causal=causal)
    return Pattern("dilated", params, patterns.dilated(**params), 1, dilation.size, candidates, heads_from="dilation")


def _dilated_offsets(window: int, dilation: np.ndarray, causal: bool, n_k: int) -> np.ndarray:
    """``j - p`` over every head: ``s * d`` for steps ``-w <= s <= w`` (``s <= 0`` causal), ``|s * d| <= N_k``."""
    steps = [
        np.arange(-min(window, n_k // d + 1), (0 if causal else min(window, n_k // d + 1)) + 1) * d for d in dilation
    ]
    return np.unique(np.concatenate(steps))


@builds("sparse.longformer")
def _longformer(n_k, *, window, global_tokens) -> Pattern:
    window = check.integer("window", window, low=0)
    g = _bool_array("global_tokens", global_tokens)
    if g.ndim not in (1, 2) or g.shape[-1] != n_k or (g.ndim == 2 and g.shape[0] < 1):
        raise ValueError(f"global_tokens must have shape (N_k,) = ({n_k},) or (B, N_k); got {g.shape}")
    g = _per_batch(g)
    global_keys = np.flatnonzero(g.any(axis=0))

    def candidates(p0, p1):
        if g[:, p0 : p1 + 1].any():  # a global query sees every key
            return np.arange(n_k)
        return np.union1d(np.arange(max(p0 - window, 0), min(p1 + window + 1, n_k)), global_keys)

    params = dict(window=window, global_tokens=g)
    return Pattern(
        "longformer", params, patterns.longformer(**params), g.shape[0], 1, candidates, batch_from="global_tokens"
    )


@builds("sparse.bigbird")
def _bigbird(n_k, *, block, window_blocks, global_blocks=None, random_blocks=None) -> Pattern:
    block, window_blocks = check.integer("block", block, low=1), check.integer("window_blocks", window_blocks, low=0)
    n_blocks = -(-n_k // block)
    is_global = np.zeros(n_blocks, dtype=bool)
    if global_blocks is not None:
        is_global[_int_array("global_blocks", global_blocks, ndims=(1,), low=0, high=n_blocks - 1)] = True
    if random_blocks is None:
        random_blocks = np.zeros((1, n_blocks, 0), dtype=np.int64)
    random_blocks = _int_array("random_blocks", random_blocks, ndims=(3,), low=0, high=n_blocks - 1)
    if random_blocks.shape[1] != n_blocks or random_blocks.shape[0] < 1:
        raise ValueError(
            f"random_blocks must have shape (H, n_blocks, r) with n_blocks = ceil(N_k / block) = "
            f"{n_blocks}; got {random_blocks.shape}"
        )
    global_list = np.flatnonzero(is_global)

    def candidates(p0, p1):
        r0, r1 = p0 // block, p1 // block
        if is_global[r0 : r1 + 1].any():
            return np.arange(n_k)
        window = np.arange(max(r0 - window_blocks, 0), min(r1 + window_blocks + 1, n_blocks))
        blocks = np.unique(np.concatenate([window, global_list, random_blocks[:, r0 : r1 + 1].ravel()]))
        return _block_positions(blocks, block, n_k)

    params = dict(block=block, window_blocks=window_blocks, is_global=is_global, random_blocks=random_blocks)
    return Pattern(
        "bigbird", params, patterns.bigbird(**params), 1, random_blocks.shape[0], candidates, heads_from="random_blocks"
    )


@builds("sparse.strided")
def _strided(n_k, *, stride, factor="merged") -> Pattern:
    stride, factor = check.integer("stride", stride, low=1), check.choice("factor", factor, patterns.FACTORS)

    def candidates(p0, p1):
        keys = [] if factor == "a2" else [np.arange(max(p0 - stride, 0), p1 + 1)]
        if factor != "a1":  # keys <= p1 in the residue classes mod l of the tile's rows (all of them once
            # the tile has l rows: A2's superset is then looser than its rows' keys by up to min(row_tile, l))
            residues = np.arange(p0, min(p1, p0 + stride - 1) + 1) % stride
            keys.append(np.add.outer(np.arange(0, p1 + 1, stride), residues).ravel())
        return _inside(np.unique(np.concatenate(keys)), p1 + 1)

    params = dict(stride=stride, factor=factor)
    return Pattern("strided", params, patterns.strided(**params), 1, 1, candidates)


@builds("sparse.fixed")
def _fixed(n_k, *, stride, summary, factor="merged") -> Pattern:
    stride, factor = check.integer("stride", stride, low=1), check.choice("factor", factor, patterns.FACTORS)
    summary = check.integer("summary", summary, low=1)
    if summary > stride:
        raise ValueError(f"summary must be <= stride = {stride}; got {summary}")

    def candidates(p0, p1):
        keys = [] if factor == "a2" else [np.arange(p0 // stride * stride, p1 + 1)]
        if factor != "a1":  # the last c positions of every block up to p1
            keys.append(np.add.outer(np.arange(0, p1 + 1, stride), np.arange(stride - summary, stride)).ravel())
        return _inside(np.unique(np.concatenate(keys)), p1 + 1)

    params = dict(stride=stride, summary=summary, factor=factor)
    return Pattern("fixed", params, patterns.fixed(**params), 1, 1, candidates)


@builds("sparse.block_sparse")
def _block_sparse(n_k, *, layout, block_q, block_k) -> Pattern:
    block_q, block_k = check.integer("block_q", block_q, low=1), check.integer("block_k", block_k, low=1)
    layout = _bool_array("layout", layout)
    shape = (-(-n_k // block_q), -(-n_k // block_k))
    if layout.ndim != 3 or layout.shape[1:] != shape or layout.shape[0] < 1:
        raise ValueError(
            f"layout must have shape (H, ceil(N_k / block_q), ceil(N_k / block_k)) = (H, {shape[0]}, "
            f"{shape[1]}); got {layout.shape}"
        )

    def candidates(p0, p1):
        cols = np.flatnonzero(layout[:, p0 // block_q : p1 // block_q + 1].any(axis=(0, 1)))
        return _block_positions(cols, block_k, n_k)

    params = dict(layout=layout, block_q=block_q, block_k=block_k)
    return Pattern(
        "block_sparse", params, patterns.block_sparse(**params), 1, layout.shape[0], candidates, heads_from="layout"
    )


@builds("sparse.prefix_lm")
def _prefix_lm(n_k, *, prefix_lens) -> Pattern:
    prefix_lens = _int_array("prefix_lens", prefix_lens, ndims=(1,), low=0, high=n_k)
    if prefix_lens.size == 0:
        raise ValueError("prefix_lens must have shape (B,) with B >= 1; got shape (0,)")
    last_prefix = int(prefix_lens.max()) - 1

    def candidates(p0, p1):
        return np.arange(min(max(p1, last_prefix), n_k - 1) + 1)

    params = dict(prefix_lens=prefix_lens)
    return Pattern(
        "prefix_lm", params, patterns.prefix_lm(**params), prefix_lens.size, 1, candidates, batch_from="prefix_lens"
    )


@builds("sparse.document")
def _document(n_k, *, document_ids, causal=False) -> Pattern:
    ids, causal = _int_array("document_ids", document_ids, ndims=(1, 2)), _flag("causal", causal)
    if ids.shape[-1] != n_k or (ids.ndim == 2 and ids.shape[0] < 1):
        raise ValueError(f"document_ids must have shape (N_k,) = ({n_k},) or (B, N_k); got {ids.shape}")
    ids = _per_batch(ids)
    first, last = _document_spans(ids)

    def candidates(p0, p1):  # the hull of the spans of the tile's documents
        hi = last[:, p0 : p1 + 1].max()
        return np.arange(first[:, p0 : p1 + 1].min(), (min(hi, p1) if causal else hi) + 1)

    params = dict(document_ids=ids, causal=causal)
    return Pattern(
        "document", params, patterns.document(**params), ids.shape[0], 1, candidates, batch_from="document_ids"
    )


def _document_spans(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last position of the document of every position, per batch item ``(B_d, N_k)``."""
    first, last = np.zeros_like(ids), np.zeros_like(ids)
    positions = np.arange(ids.shape[1])
    for b, row in enumerate(ids):  # a loop over the (few) batch items, vectorised along N
        _, inverse = np.unique(row, return_inverse=True)
        lo = np.full(inverse.max(initial=-1) + 1, ids.shape[1])
        hi = np.full_like(lo, -1)
        np.minimum.at(lo, inverse, positions)
        np.maximum.at(hi, inverse, positions)
        first[b], last[b] = lo[inverse], hi[inverse]
    return first, last


@builds("sparse.chunked")
def _chunked(n_k, *, chunk, causal=False) -> Pattern:
    chunk, causal = check.integer("chunk", chunk, low=1), _flag("causal", causal)

    def candidates(p0, p1):
        return np.arange(p0 // chunk * chunk, p1 + 1 if causal else min((p1 // chunk + 1) * chunk, n_k))

    params = dict(chunk=chunk, causal=causal)
    return Pattern("chunked", params, patterns.chunked(**params), 1, 1, candidates)


# ---- helpers ------------------------------------------------------------------------------------


def _per_batch(x: np.ndarray) -> np.ndarray:
    """``(N_k,)`` as ``(1, N_k)``, ``(B, N_k)`` as is (not ``reshape(-1, N_k)``: it fails at ``N_k = 0``)."""
    return x if x.ndim == 2 else x[None]


def _inside(keys: np.ndarray, n: int) -> np.ndarray:
    return keys[(keys >= 0) & (keys < n)]


def _block_positions(blocks: np.ndarray, size: int, n_k: int) -> np.ndarray:
    """Every position of the (sorted, distinct) ``blocks`` of ``size`` positions, clipped to ``N_k``."""
    return _inside(np.add.outer(blocks * size, np.arange(size)).ravel(), n_k)


def _flag(name: str, x) -> bool:
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {x!r}")
    return bool(x)


def _bool_array(name: str, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean array; got dtype {arr.dtype}")
    return arr


def _int_array(name: str, x, *, ndims: tuple[int, ...], low: int | None = None, high: int | None = None) -> np.ndarray:
    arr = check.int_array(name, x, low=low, high=high)
    if arr.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimension(s); got shape {arr.shape}")
    return arr
