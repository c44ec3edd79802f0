"""The flash algorithm in PyTorch operations: online softmax over key tiles, on CPU or CUDA.

Query rows are grouped by KV head, ``(B, H_kv, G, N_q, D)``, so GQA reads each key/value head
once without repeating it. For each key tile, only the contiguous range of query rows that the
causal, window and padding rules let see that tile is computed (tiles outside are skipped, not
masked); within a tile the score block is at most ``block_q x block_k`` per head, so memory is
linear in the sequence length. Scores, the running maximum, the denominator and the accumulator
are kept in float32 (float64 for float64 inputs); probabilities are cast to the value dtype
before ``P @ V``, as FlashAttention does. The elementwise work between the two products of a tile
is in :mod:`.steps`, eager or compiled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from attnspec import validation as _checks
from attnspec.backends import _torch_arrays as arrays
from attnspec.backends import _torch_visibility as vis
from attnspec.backends.torch_tiled.steps import EAGER, Steps
from attnspec.validation import causal as _check_causal
from attnspec.validation import window as _check_window


@dataclass
class Problem:
    q: torch.Tensor  # (B, H_kv, G, N_q, D_qk)
    k: torch.Tensor  # (B, H_kv, N_k, D_qk)
    v: torch.Tensor  # (B, H_kv, N_k, D_v)
    scale: float
    causal: str | None
    window: tuple[int, int] | None
    window_top_left: bool  # sdpa.window.top_left (else sdpa.window, bottom-right)
    mask: torch.Tensor | None  # bool, broadcast view (B, H_q, N_q, N_k)
    bias: torch.Tensor | None  # float, broadcast view (B, H_q, N_q, N_k)
    softcap: float | None
    slopes: torch.Tensor | None  # (B, H_kv, G, 1, 1)
    q_lens: np.ndarray  # host copies: tile skipping is decided on the host
    kv_lens: np.ndarray
    acc: torch.dtype
    layout: torch.Tensor | None = None  # block-sparse layout (H_l, ceil(N_k / block_q), ceil(N_k / block_k))
    layout_blocks: tuple[int, int] = (1, 1)  # its (block_q, block_k), over positions
    steps: Steps = EAGER

    @property
    def shape(self):
        b, h_kv, g, n_q, _ = self.q.shape
        return b, h_kv, g, n_q, self.k.shape[2], self.v.shape[3]

    @cached_property
    def rules(self) -> vis.Rules:
        """The options as visibility rules and score modifiers, with the host lengths (to plan tiles)."""
        b, h_kv, g, n_q, n_k, _ = self.shape
        left, right = vis.window_sides(self.window)
        return vis.Rules(
            n_q,
            n_k,
            self.causal,
            left,
            right,
            self.q_lens,
            self.kv_lens,
            self.mask,
            self.softcap,
            self.bias,
            None if self.slopes is None else self.slopes.reshape(b, h_kv * g),
            self.window_top_left,
        )

    @cached_property
    def on_device(self) -> vis.Rules:
        """The rules with the lengths on the device, to evaluate them on tiles (copied once, when first needed)."""
        return self.rules.to(self.q.device)


def prepare(
    q,
    k,
    v,
    *,
    scale=None,
    causal=None,
    window=None,
    window_align=None,
    mask=None,
    bias=None,
    softcap=None,
    alibi_slopes=None,
    q_lens=None,
    kv_lens=None,
    steps: Steps = EAGER,
    names: tuple[str, str, str] = ("q", "k", "v"),
) -> Problem:
    """Check the arguments (the same errors as the reference) and group the query heads.

    ``names`` are the caller's names of ``q, k, v`` for the errors (``decode``'s ``k_cache``).
    Lengths may be tensors or host arrays; they are read on the host either way.
    """
    given = dict(zip(names, (q, k, v), strict=True))
    for name, x in given.items():
        _checks.dims(name, arrays.tensor(name, x), 4)
    _checks.same_dtype(**given)
    h_kv, n_k = _checks.kv_shapes(q, k, v, names)  # D_qk = 0 is an error here, before 1 / sqrt(D_qk)
    b, h_q, n_q, d = q.shape
    full = (b, h_q, n_q, n_k)
    group = h_q // h_kv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    lens = [
        np.full(b, n) if x is None else _checks.int_array(name, arrays.host(x), shape=(b,), low=0, high=n)
        for name, x, n in (("q_lens", q_lens, n_q), ("kv_lens", kv_lens, n_k))
    ]
    slopes = None
    if alibi_slopes is not None:
        slopes = _slopes(alibi_slopes, b, h_q).to(q.device, acc).expand(b, h_q).reshape(b, h_kv, group, 1, 1)
    return Problem(
        q=q.reshape(b, h_kv, group, n_q, d),
        k=k,
        v=v,
        scale=1.0 / math.sqrt(d) if scale is None else _checks.finite_float("scale", scale),
        causal=_check_causal(causal),
        window=_check_window(window),
        window_top_left=_checks.window_align(window_align) == "top_left",
        mask=None if mask is None else _mask(mask, full),
        bias=None if bias is None else _bias(bias, full),
        softcap=_checks.positive_float("softcap", softcap, allow_none=True),
        slopes=slopes,
        q_lens=lens[0],
        kv_lens=lens[1],
        acc=acc,
        steps=steps,
    )


def _mask(mask, full: tuple) -> torch.Tensor:
    """Clause ``sdpa.mask``: a boolean tensor, broadcast to ``full`` (a float mask is an error, not cast)."""
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if torch.is_tensor(mask) else type(mask).__name__
        raise TypeError(f"mask must be a boolean tensor (True = may attend); got {got}")
    _checks.broadcastable("mask", arrays.stand_in(mask), full)
    return mask.expand(full)


def _bias(bias, full: tuple) -> torch.Tensor:
    """Clause ``sdpa.bias``: finite or ``-inf`` (the check reads the tensor: one synchronisation on CUDA)."""
    bias = arrays.tensor("bias", bias)
    _checks.broadcastable("bias", arrays.stand_in(bias), full)
    if bool((torch.isnan(bias) | torch.isposinf(bias)).any()):
        raise ValueError("bias must be finite or -inf (use -inf to exclude a key); got NaN or +inf")
    return bias.expand(full)


def _slopes(slopes, b: int, h_q: int) -> torch.Tensor:
    """Clause ``sdpa.alibi``: finite slopes of shape ``(H_q,)`` or ``(B, H_q)``."""
    slopes = arrays.tensor("alibi_slopes", slopes)
    if tuple(slopes.shape) not in ((h_q,), (b, h_q)):
        raise ValueError(
            f"alibi_slopes must have shape (H_q,) = ({h_q},) or (B, H_q) = ({b}, {h_q}); got {tuple(slopes.shape)}"
        )
    if not bool(torch.isfinite(slopes).all()):
        raise ValueError("alibi_slopes must be finite")
    return slopes


def forward(p: Problem, *, block_q: int | None = None, block_k: int = 128, key_range: tuple[int, int] | None = None):
    """``(out, lse)`` over the keys in ``key_range``; out ``(B, H_q, N_q, D_v)`` in the accumulator dtype."""
    b, h_kv, g, n_q, n_k, d_v = p.shape
    start, stop = key_range or (0, n_k)
    m = torch.full((b, h_kv, g, n_q), -math.inf, dtype=p.acc, device=p.q.device)
    total = torch.zeros_like(m)
    acc = torch.zeros((b, h_kv, g, n_q, d_v), dtype=p.acc, device=p.q.device)
    for c0 in range(start, stop, block_k):
        c1 = min(c0 + block_k, stop)
        lo, hi = vis.row_range(p.rules, c0, c1)
        for r0, r1 in _row_blocks(p, lo, hi, c1, block_q):
            _update(p, r0, r1, c0, c1, m, total, acc)
    return _finish(p, m, total, acc)


def _row_blocks(p: Problem, lo: int, hi: int, c1: int, block_q: int | None) -> list[tuple[int, int]]:
    """The row blocks of one key tile: ``block_q`` rows each; without ``block_q``, the rows on the
    causal diagonal apart from the rows below it, so that only the former build a mask (``_update``
    decides whether a block needs one)."""
    if block_q:
        return [(r0, min(hi, r0 + block_q)) for r0 in range(lo, hi, block_q)]
    diagonal_end = vis.causal_diagonal_end(p.rules, c1)
    cut = min(max(lo if diagonal_end is None else diagonal_end, lo), hi)
    return [(r0, r1) for r0, r1 in ((lo, cut), (cut, hi)) if r0 < r1]


def block_sparse(p: Problem, layout: np.ndarray, block_q: int, block_k: int):
    """Clause ``sparse.block_sparse``: only the key blocks some head's layout row marks are computed.

    Query blocks are over positions (row ``i`` is position ``i + N_k - N_q``); each is one online
    softmax over its active key blocks, masked per head by the layout, so the work follows the
    layout's nonzeros and the memory is one ``block_q x block_k`` tile per head.
    """
    b, h_kv, g, n_q, n_k, d_v = p.shape
    p = replace(p, layout=torch.as_tensor(layout, device=p.q.device), layout_blocks=(block_q, block_k))
    offset = n_k - n_q
    m = torch.full((b, h_kv, g, n_q), -math.inf, dtype=p.acc, device=p.q.device)
    total = torch.zeros_like(m)
    acc = torch.zeros((b, h_kv, g, n_q, d_v), dtype=p.acc, device=p.q.device)
    for qb in range(offset // block_q, layout.shape[1]):
        r0, r1 = max(qb * block_q - offset, 0), min((qb + 1) * block_q - offset, n_q)
        for kb in np.flatnonzero(layout[:, qb].any(axis=0)):
            _update(p, r0, r1, int(kb) * block_k, min((int(kb) + 1) * block_k, n_k), m, total, acc)
    return _finish(p, m, total, acc)


def layout_table(layout: torch.Tensor, block_q: int, block_k: int, n_q: int, n_k: int, rows=None, cols=None):
    """``layout[h, position // block_q, key // block_k]`` for query ``rows`` and key ``cols``: ``(H_l, rows, cols)``."""
    rows = range(n_q) if rows is None else rows
    cols = range(n_k) if cols is None else cols
    positions = torch.arange(rows.start, rows.stop, device=layout.device) + (n_k - n_q)
    keys = torch.arange(cols.start, cols.stop, device=layout.device)
    return layout[:, positions // block_q][:, :, keys // block_k]


def _tile(p: Problem, r0, r1, c0, c1) -> vis.Tile:
    b, h_kv, g = p.q.shape[:3]
    return vis.tile(b, (h_kv, g), range(r0, r1), range(c0, c1), p.q.device)


def tile_fully_visible(p: Problem, r0, r1, c0, c1) -> bool:
    """True if every (row, key) pair of the tile is visible in every batch item: no mask needed."""
    return p.layout is None and vis.fully_visible(p.rules, r0, r1, c0, c1)


def tile_visible(p: Problem, r0, r1, c0, c1) -> torch.Tensor:
    """Boolean ``(B, 1 or H_kv, 1 or G, rows, cols)`` from every visibility rule."""
    visible = p.on_device.visible(*_tile(p, r0, r1, c0, c1))
    if p.layout is not None:
        b, h_kv, g, n_q, n_k, _ = p.shape
        tile = layout_table(p.layout, *p.layout_blocks, n_q, n_k, range(r0, r1), range(c0, c1))
        heads = (h_kv, g) if tile.shape[0] > 1 else (1, 1)  # per query head, or one for all
        visible = visible & tile.reshape(1, *heads, r1 - r0, c1 - c0)
    return visible


def tile_scores(p: Problem, r0, r1, c0, c1, scaled: bool = False):
    """``(s, scale)``: scores ``(B, H_kv, G, rows, cols)`` in the accumulator dtype, to be multiplied by ``scale``.

    With softcap, bias or ALiBi (which act on scaled scores), or when ``scaled``, they come scaled and
    modified, with ``scale = 1``; otherwise the product is returned as is and the scale is left to
    the softmax step, which fuses it.
    """
    s = grouped_matmul(p.q[:, :, :, r0:r1], p.k[:, :, c0:c1].transpose(-1, -2), p.acc)
    if not (scaled or p.rules.modifies):
        return s, p.scale
    s = s * p.scale
    if p.rules.modifies:
        s = p.on_device.modify(s, *_tile(p, r0, r1, c0, c1))
    return s, 1.0


def _update(p: Problem, r0, r1, c0, c1, m, total, acc) -> None:
    """One online-softmax step for rows ``[r0, r1)`` and keys ``[c0, c1)``, in place."""
    s, scale = tile_scores(p, r0, r1, c0, c1)
    visible = None if tile_fully_visible(p, r0, r1, c0, c1) else tile_visible(p, r0, r1, c0, c1)
    v = _values(p, c0, c1)
    e, top, row_sum = p.steps.tile_softmax(s, scale, visible, v.dtype)
    weighted = grouped_matmul(e, v, p.acc)
    p.steps.combine(acc[..., r0:r1, :], m[..., r0:r1], total[..., r0:r1], weighted, top, row_sum)


def _values(p: Problem, c0, c1) -> torch.Tensor:
    """``V[:, :, c0:c1]``, zeroed past ``kv_lens``: keys there are never read, even multiplied by 0."""
    v = p.v[:, :, c0:c1]
    if (p.kv_lens < c1).any():
        b = torch.arange(v.shape[0], device=v.device)[:, None]
        key_ok = p.on_device.key_present(b, torch.arange(c0, c1, device=v.device)[None, :])
        v = torch.where(key_ok[:, None, :, None], v, torch.zeros((), dtype=v.dtype, device=v.device))
    return v


def grouped_matmul(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``(B, H, G, n, x) @ (B, H, x, y)`` -> ``(B, H, G, n, y)`` accumulated and returned in ``acc``.

    16-bit inputs are multiplied with float32 accumulation and a float32 result (scores are never
    rounded to 16 bits, as in FlashAttention): on CUDA through ``bmm(out_dtype=)``, elsewhere by
    upcasting the operands.
    """
    bsz, heads, group, n, x = a.shape
    out = _bmm(a.reshape(bsz * heads, group * n, x), b.reshape(bsz * heads, x, b.shape[-1]), acc)
    return out.view(bsz, heads, group, n, b.shape[-1])


def _bmm(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``torch.bmm`` accumulated and returned in ``acc``."""
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.bmm(a, b, out_dtype=acc) if a.is_cuda else torch.bmm(a.to(acc), b.to(acc))
    return torch.bmm(a, b).to(acc)


def _normalize(weighted, shift, total):
    """``(weighted / total, shift + log(total))``; a row with ``total = 0`` (no visible key) gives 0 and -inf."""
    has_key = total > 0
    out = torch.where(has_key[..., None], weighted / torch.where(has_key, total, 1)[..., None], 0.0)
    lse = torch.where(has_key, shift + torch.log(torch.where(has_key, total, 1)), -math.inf)
    return out, lse


def _finish(p: Problem, m, total, acc):
    b, h_kv, g, n_q, _, d_v = p.shape
    out, lse = _normalize(acc, m, total)
    return out.reshape(b, h_kv * g, n_q, d_v), lse.reshape(b, h_kv * g, n_q)


def merge(outs: torch.Tensor, lses: torch.Tensor):
    """Clause ``flash.merge``: partial results over disjoint key sets combined by their LSE."""
    top = lses.amax(dim=0)
    shift = torch.where(top == -math.inf, torch.zeros_like(top), top)
    weights = torch.exp(lses - shift)
    weighted = torch.where(weights[..., None] > 0, weights[..., None] * outs, 0.0).sum(dim=0)
    return _normalize(weighted, shift, weights.sum(dim=0))


#: At most this many query rows per KV head (G * N_q) take the parallel split-KV path.
DECODE_ROWS = 64


def split_kv(p: Problem, num_splits: int, block_k: int = 128):
    """Clause ``flash.split_kv``: partials over ``num_splits`` contiguous key ranges, merged."""
    n_k = p.k.shape[2]
    # Splits past the last key are empty and add nothing to the merge (clause flash.split_kv);
    # at most N_k splits keep the chunk size and spare a huge num_splits its huge padded layout.
    num_splits = min(num_splits, max(n_k, 1))
    if p.q.shape[2] * p.q.shape[3] <= DECODE_ROWS and p.mask is None and p.bias is None:
        return _split_kv_parallel(p, num_splits)
    chunk = max(1, math.ceil(n_k / num_splits))
    parts = [
        forward(p, block_k=block_k, key_range=(min(s * chunk, n_k), min((s + 1) * chunk, n_k)))
        for s in range(num_splits)
    ]
    return merge(torch.stack([o for o, _ in parts]), torch.stack([lse for _, lse in parts]))


def _split_kv_parallel(p: Problem, num_splits: int):
    """Flash-decoding for few query rows: every split's partial softmax in one batched pass.

    Scores are laid out ``(B * H_kv * S, G * N_q, chunk)`` so that split ``s`` of a KV head is one
    product of the batch: with ``N_k`` a multiple of ``S`` and no score modifier, K is read in place
    as a ``(B * H_kv * S, chunk, D)`` view (the few query rows are repeated per split); otherwise
    the scores and V are padded to ``S * chunk`` keys. V is a view too, unless some cache is shorter
    than ``N_k``: then it is copied with the keys past ``kv_lens`` zeroed. The score block is
    linear in the cache length.
    """
    b, h_kv, g, n_q, n_k, d_v = p.shape
    d = p.q.shape[-1]  # sizes spelled out: a reshape cannot infer -1 when B or N_q is 0
    chunk = max(1, math.ceil(n_k / num_splits))
    pad, rows, batch = num_splits * chunk - n_k, g * n_q, b * h_kv * num_splits
    if pad == 0 and not p.rules.modifies:
        q = p.q.reshape(b, h_kv, 1, rows, d).expand(-1, -1, num_splits, -1, -1).reshape(batch, rows, d)
        s, scale = _bmm(q, p.k.reshape(batch, chunk, d).transpose(1, 2), p.acc), p.scale
    else:
        s, scale = tile_scores(p, 0, n_q, 0, n_k, scaled=True)
        s = _split_layout(torch.nn.functional.pad(s, (0, pad), value=-math.inf), num_splits)
    visible = None
    if not tile_fully_visible(p, 0, n_q, 0, n_k):
        visible = tile_visible(p, 0, n_q, 0, n_k).expand(b, h_kv, g, n_q, n_k)
        visible = _split_layout(torch.nn.functional.pad(visible, (0, pad), value=False), num_splits)
    v = _values(p, 0, n_k)
    if pad:
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    e, top, row_sum = p.steps.tile_softmax(s, scale, visible, v.dtype)
    pv = _bmm(e, v.reshape(batch, chunk, d_v), p.acc)

    def by_split(x):  # (B * H_kv * S, G * N_q, ...) -> (S, B, H_kv, G, N_q, ...)
        return x.reshape(b, h_kv, num_splits, g, n_q, *x.shape[2:]).movedim(2, 0)

    if num_splits == 1:  # one partial is the result: no merge (a dozen small kernels per decode step)
        out, lse = _normalize(pv, top, row_sum)
    else:
        out, lse = merge(*_normalize(by_split(pv), by_split(top), by_split(row_sum)))
    return out.reshape(b, h_kv * g, n_q, d_v), lse.reshape(b, h_kv * g, n_q)


def _split_layout(x: torch.Tensor, num_splits: int) -> torch.Tensor:
    """``(B, H_kv, G, N_q, S * chunk)`` -> ``(B * H_kv * S, G * N_q, chunk)`` (a copy)."""
    b, h_kv, g, n_q, n = x.shape
    x = x.reshape(b, h_kv, g, n_q, num_splits, n // num_splits).permute(0, 1, 4, 2, 3, 5)
    return x.reshape(b * h_kv * num_splits, g * n_q, n // num_splits)
