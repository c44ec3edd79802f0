"""NSA-style hierarchical attention in float64 (clauses ``nsa.*`` in :mod:`attnspec.hierarchical`).

Each branch is ``sdpa`` on an equivalent dense problem: the compressed branch over the block
summaries with a block-causal mask, the selected branch over the tokens of the selected blocks,
the window branch with a causal window. :meth:`NSA.branches` returns those problems, so the
conformance suite bounds each branch's error as it bounds ``sdpa``'s. One method per clause, so a
variant (a mutant) overrides exactly one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnspec import validation as check
from attnspec.clauses import reference
from attnspec.reference.arithmetic import EXACT, Arithmetic
from attnspec.reference.sdpa import prepare
from attnspec.reference.sdpa import sdpa as dense


@dataclass(frozen=True)
class NSA:
    """One validated NSA call. ``v`` and ``gates`` are None for a selection-only call."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray | None
    gates: np.ndarray | None
    cmp_len: int
    cmp_stride: int
    sel_len: int
    top_n: int
    window: int | None
    init_blocks: int
    local_blocks: int
    compress_k: np.ndarray | None
    compress_v: np.ndarray | None
    scale: float

    @classmethod
    def build(
        cls,
        q,
        k,
        v=None,
        *,
        gates=None,
        cmp_len,
        cmp_stride,
        sel_len,
        top_n,
        window=None,
        init_blocks=0,
        local_blocks=0,
        compress_k=None,
        compress_v=None,
        scale=None,
    ) -> NSA:
        """Validate the arguments (TypeError/ValueError naming the argument)."""
        values = v if v is not None else np.zeros(np.shape(k)[:3] + (1,))
        problem = prepare(q, k, values, scale=scale)  # shapes, dtypes, GQA and scale as sdpa checks them
        b, h_q, n_q, _ = problem.q.shape
        if n_q > problem.n_k:
            raise ValueError(
                f"nsa needs N_q <= N_k (queries are the last N_q tokens); got q {problem.q.shape}, k {problem.k.shape}"
            )
        sizes = _check_blocking(cmp_len, cmp_stride, sel_len, top_n, init_blocks, local_blocks)
        if v is not None:
            window = check.integer("window", window, low=1)
            gates = check.float_array("gates", gates, ndim=4)
            if gates.shape != (b, h_q, n_q, 3) or not np.isfinite(gates).all():
                raise ValueError(
                    f"gates must be finite with shape (B, H_q, N_q, 3) = {(b, h_q, n_q, 3)}; got shape {gates.shape}"
                )
        l = sizes["cmp_len"]
        n_k = problem.n_k
        n_c = (n_k - l) // sizes["cmp_stride"] + 1 if n_k >= l else 0  # compression blocks, as num_cmp
        arrays = [("compressed scores (B, H_q, N_q, N_c)", (b, h_q, n_q, n_c), 8)]
        if v is not None:  # the selected and window branches are dense sdpa problems
            arrays.append(("float64 scores (B, H_q, N_q, N_k)", (b, h_q, n_q, n_k), 8))
        check.fits_in_memory("nsa", *arrays)
        k_weights = _check_weights("compress_k", compress_k, l, problem.k.shape[-1])
        v_weights = None if v is None else _check_weights("compress_v", compress_v, l, problem.v.shape[-1])
        return cls(
            problem.q,
            problem.k,
            None if v is None else problem.v,
            gates,
            window=window,
            compress_k=k_weights,
            compress_v=v_weights,
            scale=problem.scale,
            **sizes,
        )

    @property
    def group(self) -> int:
        return self.q.shape[1] // self.k.shape[1]

    @property
    def positions(self) -> np.ndarray:
        """``t_i = i + N_k - N_q``: the position of each query (bottom-right aligned)."""
        return np.arange(self.q.shape[2]) + self.k.shape[2] - self.q.shape[2]

    @property
    def num_cmp(self) -> int:
        """Compression blocks inside the sequence: ``N_c = (N_k - l) // d + 1``, or 0 if ``N_k < l``."""
        n_k = self.k.shape[2]
        return (n_k - self.cmp_len) // self.cmp_stride + 1 if n_k >= self.cmp_len else 0

    @property
    def num_blocks(self) -> int:
        """Selection blocks: ``ceil(N_k / sel_len)``."""
        return -(-self.k.shape[2] // self.sel_len)

    # nsa.compress

    def compress(self, x: np.ndarray, weights: np.ndarray | None, arithmetic: Arithmetic = EXACT) -> np.ndarray:
        """Summaries ``(B, H, N_c, D)`` of the complete blocks ``[c*d, c*d + l)`` of ``x``."""
        l, d = self.cmp_len, self.cmp_stride
        tokens = (np.arange(self.num_cmp) * d)[:, None] + np.arange(l)[None, :]
        blocks = x[:, :, tokens].astype(arithmetic.compute)  # (B, H, N_c, l, D)
        if weights is None:
            ones = np.ones((1, l), arithmetic.compute)
            summary = arithmetic.round(arithmetic.matmul(ones, blocks))[..., 0, :] / arithmetic.compute(l)
        elif weights.ndim == 1:
            summary = arithmetic.matmul(weights.astype(arithmetic.compute)[None, :], blocks)[..., 0, :]
        else:
            flat = blocks.reshape(blocks.shape[:3] + (l * x.shape[3],))  # token-major
            summary = arithmetic.matmul(flat, weights.astype(arithmetic.compute))
        return arithmetic.round(summary)

    def cmp_visible(self) -> np.ndarray:
        """``(N_q, N_c)``: block ``c`` is visible to query ``i`` iff complete, ``c*d + l - 1 <= t_i``."""
        last = np.arange(self.num_cmp) * self.cmp_stride + self.cmp_len - 1
        return last[None, :] <= self.positions[:, None]

    def cmp_probabilities(self, arithmetic: Arithmetic = EXACT) -> np.ndarray:
        """``p_cmp`` ``(B, H_q, N_q, N_c)``: the compressed branch's softmax, 0 where invisible."""
        k_cmp = self.compress(self.k, self.compress_k, arithmetic)
        b, h_q, n_q, d = self.q.shape
        h_kv, n_c = k_cmp.shape[1], k_cmp.shape[2]
        if n_c == 0:
            return np.zeros((b, h_q, n_q, 0))
        grouped = self.q.astype(arithmetic.compute).reshape(b, h_kv, self.group, n_q, d)
        s = arithmetic.matmul(grouped, np.swapaxes(k_cmp, -1, -2)[:, :, None]).reshape(b, h_q, n_q, n_c)
        s = np.where(self.cmp_visible(), arithmetic.round(s * arithmetic.compute(self.scale)), -np.inf)
        row_max = s.max(axis=-1, keepdims=True)
        e = arithmetic.round(np.exp(s - np.where(np.isneginf(row_max), 0.0, row_max)))
        total = e.sum(axis=-1, keepdims=True)
        return arithmetic.round(e / np.where(total > 0, total, 1.0))

    # nsa.select

    def block_weights(self) -> np.ndarray:
        """``W[c, j]``: tokens shared by compression block ``c`` and selection block ``j``, over ``l``.

        ``sum_c W[c, j] p[c]`` is ``d / l`` times the paper's Eq. 9 with the index
        ``(l'/d)(j+1) - 1 - m - n``, not the literal ``(l'/d) j - m - n``: the blocks overlapping
        ``j``, once per shared stride (``nsa.select``).
        """
        c_lo = np.arange(self.num_cmp)[:, None] * self.cmp_stride
        j_lo = np.arange(self.num_blocks)[None, :] * self.sel_len
        shared = np.minimum(c_lo + self.cmp_len, j_lo + self.sel_len) - np.maximum(c_lo, j_lo)
        return np.maximum(shared, 0) / self.cmp_len

    def importance(self, arithmetic: Arithmetic = EXACT) -> np.ndarray:
        """``imp`` ``(B, H_kv, N_q, num_blocks)``: summed over the group's query heads."""
        p = self.cmp_probabilities(arithmetic)
        b, h_q, n_q, n_c = p.shape
        summed = arithmetic.round(p.reshape(b, h_q // self.group, self.group, n_q, n_c).sum(axis=2))
        return arithmetic.round(arithmetic.matmul(summed, self.block_weights().astype(arithmetic.compute)))

    def forced(self) -> np.ndarray:
        """``(N_q, num_blocks)``: initial and local blocks among the candidates."""
        j, current = np.arange(self.num_blocks)[None, :], (self.positions // self.sel_len)[:, None]
        return self.candidates() & ((j < self.init_blocks) | (j > current - self.local_blocks))

    def candidates(self) -> np.ndarray:
        """``(N_q, num_blocks)``: blocks holding a visible token, ``j * sel_len <= t_i``."""
        return np.arange(self.num_blocks)[None, :] * self.sel_len <= self.positions[:, None]

    def select(self, importance: np.ndarray | None = None) -> np.ndarray:
        """``indices`` ``(B, H_kv, N_q, top_n)``: ascending, then ``-1`` in unused slots."""
        imp = self.importance() if importance is None else importance
        cand = np.broadcast_to(self.candidates(), imp.shape)
        key = np.where(np.broadcast_to(self.forced(), imp.shape), np.inf, np.where(cand, imp, -np.inf))
        order = self.ranking(key)[..., : self.top_n]
        chosen = np.where(np.take_along_axis(cand, order, axis=-1), order, self.num_blocks)
        chosen = np.sort(chosen, axis=-1)
        pad = np.full(chosen.shape[:-1] + (self.top_n - chosen.shape[-1],), self.num_blocks)
        chosen = np.concatenate([chosen, pad], axis=-1)
        return np.where(chosen == self.num_blocks, -1, chosen)

    def ranking(self, key: np.ndarray) -> np.ndarray:
        """Block indices by decreasing ``key``; a stable sort keeps the lower index first among equals."""
        return np.argsort(-key, axis=-1, kind="stable")

    # nsa.selected

    def selected_mask(self, indices: np.ndarray) -> np.ndarray:
        """``(B, H_q, N_q, N_k)``: tokens of the selected blocks at or before ``t_i``."""
        b, h_kv, n_q, _ = indices.shape
        blocks = np.zeros((b, h_kv, n_q, self.num_blocks + 1), dtype=bool)  # the extra column absorbs -1
        np.put_along_axis(blocks, np.where(indices < 0, self.num_blocks, indices), True, axis=-1)
        j = np.arange(self.k.shape[2])
        tokens = blocks[..., j // self.sel_len] & (j[None, :] <= self.positions[:, None])
        return np.repeat(tokens, self.group, axis=1)

    # nsa.window and nsa.combine

    def branches(self) -> list[tuple]:
        """The three branches as ``sdpa`` problems ``(q, k, v, options)``: compressed, selected, window."""
        k_cmp = self.compress(self.k, self.compress_k)
        v_cmp = self.compress(self.v, self.compress_v)
        base = {"scale": self.scale}
        return [
            (self.q, k_cmp, v_cmp, {**base, "mask": self.cmp_visible()[None, None]}),
            (self.q, self.k, self.v, {**base, "mask": self.selected_mask(self.select())}),
            (self.q, self.k, self.v, {**base, **self.window_options()}),
        ]

    def window_options(self) -> dict:
        return {"causal": "bottom_right", "window": (self.window - 1, 0)}

    def output(self) -> np.ndarray:
        """``out = sum_c gates[..., c] * o_c``."""
        outs = [dense(*problem[:3], **problem[3]) for problem in self.branches()]
        return sum(self.gates[..., c, None] * out for c, out in enumerate(outs))


@reference("nsa")
def nsa(
    q,
    k,
    v,
    *,
    gates,
    cmp_len,
    cmp_stride,
    sel_len,
    top_n,
    window,
    init_blocks=0,
    local_blocks=0,
    compress_k=None,
    compress_v=None,
    scale=None,
) -> np.ndarray:
    """Clauses ``nsa.*``: the gated sum of the compressed, selected and window branches ``(B, H_q, N_q, D_v)``."""
    return NSA.build(
        q,
        k,
        v,
        gates=gates,
        cmp_len=cmp_len,
        cmp_stride=cmp_stride,
        sel_len=sel_len,
        top_n=top_n,
        window=window,
        init_blocks=init_blocks,
        local_blocks=local_blocks,
        compress_k=compress_k,
        compress_v=compress_v,
        scale=scale,
    ).output()


@reference("nsa_select")
def nsa_select(
    q, k, *, cmp_len, cmp_stride, sel_len, top_n, init_blocks=0, local_blocks=0, compress_k=None, scale=None
) -> np.ndarray:
    """Clause ``nsa.select``: selected block indices ``(B, H_kv, N_q, top_n)``, ascending, ``-1``-padded."""
    return NSA.build(
        q,
        k,
        cmp_len=cmp_len,
        cmp_stride=cmp_stride,
        sel_len=sel_len,
        top_n=top_n,
        init_blocks=init_blocks,
        local_blocks=local_blocks,
        compress_k=compress_k,
        scale=scale,
    ).select()


def _check_blocking(cmp_len, cmp_stride, sel_len, top_n, init_blocks, local_blocks) -> dict:
    """The block parameters as integers, with the paper's conditions on them."""
    cmp_len, cmp_stride, sel_len, top_n = (
        check.integer(name, value, low=1)
        for name, value in (("cmp_len", cmp_len), ("cmp_stride", cmp_stride), ("sel_len", sel_len), ("top_n", top_n))
    )
    init_blocks = check.integer("init_blocks", init_blocks, low=0)
    local_blocks = check.integer("local_blocks", local_blocks, low=0)
    if init_blocks + local_blocks > top_n:
        raise ValueError(f"init_blocks + local_blocks must be <= top_n = {top_n}; got {init_blocks} + {local_blocks}")
    if cmp_len % cmp_stride:
        raise ValueError(f"cmp_len must be a multiple of cmp_stride = {cmp_stride}; got {cmp_len}")
    if sel_len % cmp_stride:
        raise ValueError(f"sel_len must be a multiple of cmp_stride = {cmp_stride}; got {sel_len}")
    if cmp_len > sel_len:
        raise ValueError(f"cmp_len must be <= sel_len = {sel_len}; got {cmp_len}")
    return dict(
        cmp_len=cmp_len,
        cmp_stride=cmp_stride,
        sel_len=sel_len,
        top_n=top_n,
        init_blocks=init_blocks,
        local_blocks=local_blocks,
    )


def _check_weights(name: str, weights, cmp_len: int, dim: int) -> np.ndarray | None:
    """None (block mean), position weights ``(l,)`` or a linear map ``(l * D, D)``; finite."""
    if weights is None:
        return None
    weights = check.float_array(name, weights)
    if weights.shape not in ((cmp_len,), (cmp_len * dim, dim)):
        raise ValueError(
            f"{name} must be None, of shape (cmp_len,) = ({cmp_len},) or (cmp_len * D, D) = "
            f"({cmp_len * dim}, {dim}); got {weights.shape}"
        )
    if not np.isfinite(weights).all():
        raise ValueError(f"{name} must be finite")
    return weights


__all__ = ["NSA", "nsa", "nsa_select"]
