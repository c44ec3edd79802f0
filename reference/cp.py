"""Context-parallel attention in float64 (clauses in :mod:`attnspec.cp`), ``P`` ranks simulated.

Nothing is gathered for the ring: rank ``r`` starts with its own shards, and at each step computes
its queries' partial over the K/V shard it holds, with every rule evaluated at the global positions
of :func:`positions`, merges it into its running result by ``flash.merge`` and passes the shard on.
Ulysses is simulated as its two all-to-alls: head groups over the whole sequence, and back.
:func:`gathered` is the dense definition (clause ``cp``) that both are checked against.

The steps are functions with their pieces as arguments (the position map, the merge, the pair
plan), so that a mutant can replace one piece and keep the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.cp import LAYOUTS, SCHEMES
from attnspec.reference.flash import merge_partials
from attnspec.reference.sdpa import sdpa, softmax_average

CAUSAL = check.CAUSAL


def positions(layout: str, world_size: int, shard_len: int) -> np.ndarray:
    """Integer ``(P, C)``: ``pos(r, t)``, the global position of token ``t`` of shard ``r``.

    Clauses ``cp.layout.contiguous`` (``r * C + t``) and ``cp.layout.zigzag`` (chunks ``r`` and
    ``2P - 1 - r`` of ``C / 2`` tokens).
    """
    layout = check.choice("layout", layout, LAYOUTS)
    p, c = world_size, shard_len
    if layout == "contiguous":
        return np.arange(p * c).reshape(p, c)
    if c % 2:
        raise ValueError(f"layout 'zigzag' needs an even shard length C = N / P (two chunks per rank); got C = {c}")
    half = c // 2
    r = np.arange(p)[:, None]
    t = np.arange(half)[None, :]
    return np.concatenate([r * half + t, (2 * p - 1 - r) * half + t], axis=1)


def shard(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``(B, H, N, D)`` -> ``(P, B, H, C, D)``: shard ``r`` holds the tokens at ``pos[r]``."""
    return np.stack([x[:, :, row] for row in pos])


def unshard(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``(P, B, H, C, ...)`` -> ``(B, H, N, ...)``, the inverse of :func:`shard`."""
    p, c = pos.shape
    out = np.empty(x.shape[1:3] + (p * c,) + x.shape[4:], dtype=x.dtype)
    for r in range(p):
        out[:, :, pos[r]] = x[r]
    return out


@dataclass(frozen=True)
class Shards:
    """Validated arguments of one call: the stacked shards and the global rules."""

    q: np.ndarray  # (P, B, H_q, C, D_qk)
    k: np.ndarray  # (P, B, H_kv, C, D_qk)
    v: np.ndarray  # (P, B, H_kv, C, D_v)
    layout: str
    scheme: str
    scale: float
    causal: bool
    seq_lens: np.ndarray  # (B,)

    @property
    def world_size(self) -> int:
        return self.q.shape[0]

    @property
    def shard_len(self) -> int:
        return self.q.shape[3]


def prepare(q, k, v, *, layout="contiguous", scheme="ring", scale=None, causal=None, seq_lens=None) -> Shards:
    """Check the arguments of ``context_parallel`` (errors name the argument)."""
    q, k, v = (check.float_array(name, x, ndim=5) for name, x in (("q", q), ("k", k), ("v", v)))
    return Shards(q, k, v, *check_arguments(q, k, v, layout, scheme, scale, causal, seq_lens))


def check_arguments(q, k, v, layout, scheme, scale, causal, seq_lens) -> tuple:
    """``(layout, scheme, scale, causal, seq_lens)`` checked for shards ``q, k, v`` (arrays or tensors
    with a ``shape``, already 5-dimensional); shared with the distributed backends, which check
    every argument before any rank starts."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check.dims(name, x, 5)
    world_size, batch, h_q, shard_len, d_qk = q.shape
    if world_size == 0:
        raise ValueError("q must have at least one shard (P >= 1) on axis 0; got P = 0")
    if tuple(k.shape[:1]) != (world_size,) or tuple(v.shape[:1]) != (world_size,):
        raise ValueError(
            f"k and v must have P = {world_size} shards on axis 0, as q; got {k.shape[0]} and {v.shape[0]}"
        )
    # Per rank the shards are sdpa's (B, H, C, D) arguments: the same shape rules.
    check.kv_shapes(_stand_in(q.shape[1:]), _stand_in(k.shape[1:]), _stand_in(v.shape[1:]))
    layout = check.choice("layout", layout, LAYOUTS)
    scheme = check.choice("scheme", scheme, SCHEMES)
    positions(layout, world_size, shard_len)  # the layout's condition on C
    if scheme == "ulysses" and k.shape[2] % world_size:
        raise ValueError(
            f"scheme 'ulysses' needs H_kv divisible by P (whole GQA groups per rank); got H_kv = {k.shape[2]}, "
            f"P = {world_size}"
        )
    scale = 1.0 / math.sqrt(d_qk) if scale is None else check.finite_float("scale", scale)
    causal = check.causal(causal) is not None
    n = world_size * shard_len
    lens = (
        np.full(batch, n) if seq_lens is None else check.int_array("seq_lens", seq_lens, shape=(batch,), low=0, high=n)
    )
    return layout, scheme, scale, causal, lens


def _stand_in(shape) -> np.ndarray:
    return np.broadcast_to(np.zeros((), np.float64), tuple(shape))


@reference("context_parallel")
def context_parallel(q, k, v, *, layout="contiguous", scheme="ring", scale=None, causal=None, seq_lens=None):
    """Clauses ``cp.*``: ``(out, lse)`` in shards, by the ring (``cp.ring``) or Ulysses (``cp.ulysses``)."""
    problem = prepare(q, k, v, layout=layout, scheme=scheme, scale=scale, causal=causal, seq_lens=seq_lens)
    if problem.scheme == "ulysses":
        return ulysses(problem)
    return ring(problem)


# --- the ring (cp.ring, cp.causal.pairs, cp.lengths) ----------------------------------------------


def visible_pairs(q_pos: np.ndarray, k_pos: np.ndarray, causal: bool, seq_lens: np.ndarray) -> np.ndarray:
    """Boolean ``(B, 1, n, m)``: query at ``q_pos`` may see key at ``k_pos`` (global positions)."""
    ok = (q_pos[None, :, None] < seq_lens[:, None, None]) & (k_pos[None, None, :] < seq_lens[:, None, None])
    if causal:
        ok = ok & (k_pos[None, None, :] <= q_pos[None, :, None])
    return ok[:, None]


def pair_kind(q_pos: np.ndarray, k_pos: np.ndarray, causal: bool) -> str:
    """Clause ``cp.causal.pairs`` for two runs of increasing positions: "full", "skipped" or "diagonal"
    (a causal mask within); "masked" for any other pair (not met by the layouts' own runs)."""
    if not causal or len(q_pos) == 0 or len(k_pos) == 0 or k_pos[-1] <= q_pos[0]:
        return "full" if len(q_pos) and len(k_pos) else "skipped"
    if k_pos[0] > q_pos[-1]:
        return "skipped"
    return "diagonal" if np.array_equal(q_pos, k_pos) else "masked"


def partial(q, k, v, q_pos, k_pos, scale: float, causal: bool, seq_lens) -> tuple[np.ndarray, np.ndarray]:
    """One rank's partial ``(out, lse)`` over one K/V shard, rules at global positions (``cp.ring``)."""
    b, h_q, n, d = q.shape
    h_kv = k.shape[1]
    grouped = q.reshape(b, h_kv, h_q // h_kv, n, d)
    s = (grouped @ np.swapaxes(k, -1, -2)[:, :, None]).reshape(b, h_q, n, k.shape[2]) * scale
    return softmax_average(s, visible_pairs(q_pos, k_pos, causal, seq_lens), v)


def ring(
    problem: Shards,
    *,
    pos: Callable[[str, int, int], np.ndarray] = positions,
    merge: Callable = merge_partials,
    compute: Callable = partial,
    skip: Callable[[np.ndarray, np.ndarray, bool], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Clause ``cp.ring``: ``P`` simulated ranks, ``P`` steps each; ``(out, lse)`` ``(P, B, H_q, C, ...)``.

    ``pos`` maps the layout to positions, ``merge`` combines two partials, ``compute`` gives one
    partial, ``skip(q_pos, k_pos, causal)`` says which partials are not computed (by default those
    ``pair_kind`` calls skipped).
    """
    p, b, h_q, c, _ = problem.q.shape
    d_v = problem.v.shape[-1]
    where = pos(problem.layout, p, c)
    skip = skip or (lambda qp, kp, causal: pair_kind(qp, kp, causal) == "skipped")
    held = [(r, problem.k[r], problem.v[r]) for r in range(p)]  # rank r holds shard `owner`'s K/V
    state = [(np.zeros((b, h_q, c, d_v)), np.full((b, h_q, c), -np.inf)) for _ in range(p)]
    for _step in range(p):
        for r in range(p):
            owner, k, v = held[r]
            if skip(where[r], where[owner], problem.causal):
                continue
            part = compute(problem.q[r], k, v, where[r], where[owner], problem.scale, problem.causal, problem.seq_lens)
            out, lse = state[r]
            state[r] = merge(np.stack([out, part[0]]), np.stack([lse, part[1]]))
        held = [held[(r - 1) % p] for r in range(p)]  # send to r + 1, receive from r - 1
    return np.stack([o for o, _ in state]), np.stack([lse for _, lse in state])


# --- Ulysses (cp.ulysses) -------------------------------------------------------------------------


def head_groups(h_q: int, h_kv: int, world_size: int) -> list[tuple[range, range]]:
    """Clause ``cp.ulysses``: rank ``r``'s ``(query heads, KV heads)``, whole GQA groups."""
    per_q, per_kv = h_q // world_size, h_kv // world_size
    return [(range(r * per_q, (r + 1) * per_q), range(r * per_kv, (r + 1) * per_kv)) for r in range(world_size)]


def ulysses(
    problem: Shards, *, groups: Callable[[int, int, int], list[tuple[range, range]]] = head_groups
) -> tuple[np.ndarray, np.ndarray]:
    """Clause ``cp.ulysses``: all-to-all to head groups over the gathered sequence, ``sdpa``, all-to-all back."""
    p, b, h_q, c, _ = problem.q.shape
    where = positions(problem.layout, p, c)
    out = np.zeros((p, b, h_q, c, problem.v.shape[-1]))
    lse = np.zeros((p, b, h_q, c))
    options = dict(scale=problem.scale, causal="top_left" if problem.causal else None)
    for heads, kv_heads in groups(h_q, problem.k.shape[2], p):
        # all-to-all: every rank sends its shard's slice of these heads; the receiver orders them by position
        q, k, v = (
            unshard(x[:, :, list(hs)], where)
            for x, hs in ((problem.q, heads), (problem.k, kv_heads), (problem.v, kv_heads))
        )
        o, s = sdpa(q, k, v, q_lens=problem.seq_lens, kv_lens=problem.seq_lens, return_lse=True, **options)
        out[:, :, list(heads)] = shard(o, where)  # the second all-to-all: back to sequence shards
        lse[:, :, list(heads)] = shard(s[..., None], where)[..., 0]
    return out, lse


# --- the definition (cp) --------------------------------------------------------------------------


def gathered(q, k, v, *, layout="contiguous", scheme="ring", scale=None, causal=None, seq_lens=None):
    """Clause ``cp`` as written: ``sdpa`` on the gathered sequence, sharded back. ``(out, lse)``."""
    problem = prepare(q, k, v, layout=layout, scheme=scheme, scale=scale, causal=causal, seq_lens=seq_lens)
    where = positions(problem.layout, problem.world_size, problem.shard_len)
    full_q, full_k, full_v = (unshard(x, where) for x in (problem.q, problem.k, problem.v))
    out, lse = sdpa(
        full_q,
        full_k,
        full_v,
        scale=problem.scale,
        causal="top_left" if problem.causal else None,
        q_lens=problem.seq_lens,
        kv_lens=problem.seq_lens,
        return_lse=True,
    )
    return shard(out, where), shard(lse[..., None], where)[..., 0]
