"""The benchmark's case matrix, and the visibility rule it counts work with.

A case is one shape (:class:`Case`); in a session for ``--backend=NAME`` every case is timed in
*roles*, each a pytest item: ``sdpa-default`` (PyTorch SDPA with PyTorch's own kernel choice, the
baseline every ratio divides by), each backend in the case's ``compare`` (window cases: ``flex``,
the issue's bar for windows), ``floor`` on floor cases, and ``backend``: the backend under test.
That is any ``--backend`` name (registry, plugin or file); no case names it, so adding a backend
is its name in the driver's ``BACKENDS`` and its targets in ``targets.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FLOOR_TILE = 2048  # the key tile of the torch backend on CUDA, whose kind of algorithm the floor bounds
FLOOR_CAUSAL_TILE = 256  # causal rows: narrow key tiles, so that about the visible triangle is computed


@dataclass(frozen=True)
class Case:
    """One shape. ``n``: queries and keys (decode: cached keys, one query); ``window``: keys a query
    sees, its own included (bottom-right, causal); ``only``: backend names the case is for."""

    kind: str  # forward | window | decode | floor | backward
    n: int
    d: int
    b: int
    h: int
    h_kv: int = 0  # 0: as many KV heads as query heads
    causal: bool = False
    window: int | None = None
    splits: int = 1  # decode: num_splits
    lens: str = "device"  # decode: where cache_lens live (host: no synchronisation needed to read them)
    dtype: str = "bfloat16"
    only: tuple[str, ...] = field(default=())
    compare: tuple[str, ...] = field(default=())  # backends timed beside it, each a role (window: flex)

    @property
    def kv_heads(self) -> int:
        return self.h_kv or self.h

    @property
    def id(self) -> str:
        if self.kind == "decode":
            return (
                f"decode-N{self.n}-B{self.b}-H{self.h}-KV{self.kv_heads}-D{self.d}-splits{self.splits}-lens_{self.lens}"
            )
        mask = f"window{self.window}" if self.window else "causal" if self.causal else "full"
        return f"{self.kind}-D{self.d}-N{self.n}-B{self.b}-H{self.h}-{mask}"

    def roles(self, backend_spec: str) -> list[str]:
        if self.only and backend_spec.partition(":")[0] not in self.only:
            return []
        if self.kind == "floor":
            return ["sdpa-default", "floor"]
        return ["sdpa-default", *(c for c in self.compare if c != backend_spec), "backend"]


def _forward(n, d, causal, kind="forward", tokens=16384, width=2048, **kw) -> Case:
    """B*N = ``tokens`` and H*D = ``width`` (rounded down where D does not divide it)."""
    return Case(kind, n, d, b=max(1, tokens // n), h=width // d, causal=causal, **kw)


def gpu_matrix() -> list[Case]:
    """bf16 on an H100: the rows issues 4, 12 and 13 state targets for."""
    cases = [_forward(n, d, c) for d in (64, 128) for n in (512, 1024, 2048, 4096, 8192, 16384) for c in (False, True)]
    cases += [_forward(4000, d, c) for d in (80, 96, 128) for c in (False, True)]  # D and N not powers of two
    cases += [_forward(16384, 128, True, kind="window", window=w, compare=("flex",)) for w in (512, 2048)]
    cases += backward_cases()
    cases += [
        _forward(n, d, c, kind="floor", only=("torch",))
        for d in (64, 128)
        for n in (2048, 4096, 8192, 16384)
        for c in (False, True)
    ]
    return cases + [
        Case("decode", n, 128, b=8, h=32, h_kv=8, splits=s, lens=where)
        for n in (8192, 32768, 131072)
        for where in ("device", "host")
        for s in (1, 16, 64)
    ]


def backward_cases() -> list[Case]:
    """Issue 16's rows: forward + backward, bf16, D = 64 and 128, N = 2k..16k, causal and not.

    Each role times one training step's attention, forward and backward together: ``sdpa-default``
    runs SDPA's forward and ``torch.autograd.grad`` through it (PyTorch's kernel choice for both);
    the backend runs ``sdpa_backward``, which computes its own forward (the output and LSE the
    backward needs) and then the gradients. Timing the backward alone is not possible for the
    backend, whose ``sdpa_backward`` takes no saved forward. Only the Triton backend has a timed
    backward target; the rows are its own, so that a full GPU run spends no time on the others."""
    return [
        _forward(n, d, c, kind="backward", only=("triton",))
        for d in (64, 128)
        for n in (2048, 4096, 8192, 16384)
        for c in (False, True)
    ]


def smoke_matrix() -> list[Case]:
    """float32, tiny: every kind once or twice, for the CPU (the harness's own tests)."""
    small = dict(tokens=256, width=32, dtype="float32")
    cases = [_forward(n, 16, c, **small) for n in (64, 128) for c in (False, True)]
    # the comparator here is the reference: FlexAttention compiles for a minute on the CPU
    cases += [
        _forward(128, 16, True, kind="window", window=32, compare=("numpy",), **small),
        _forward(128, 16, True, kind="floor", only=("torch",), **small),
        _forward(64, 16, True, kind="backward", **small),
    ]
    return cases + [
        Case("decode", 256, 16, b=1, h=4, h_kv=2, splits=s, lens=where, dtype="float32")
        for s in (1, 2)
        for where in ("device", "host")
    ]


MATRICES = {"gpu": gpu_matrix, "smoke": smoke_matrix}


def key_ranges(n_q: int, n_k: int, causal: bool, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The keys each query row sees, ``lo[i] <= key <= hi[i]``, causal and window bottom-right
    aligned (offset ``n_k - n_q``); an empty row has ``hi < lo``. The benchmark's only copy of the
    visibility rule: FLOPs are counted and the floor's rows are chosen from it."""
    i, offset = np.arange(n_q, dtype=np.int64), n_k - n_q
    lo, hi = np.zeros(n_q, np.int64), np.full(n_q, n_k - 1, np.int64)
    if causal:
        hi = np.minimum(hi, i + offset)
    if window is not None:
        lo = np.maximum(lo, i + offset - (window - 1))
    return lo, hi


def visible_pairs(n_q: int, n_k: int, causal: bool = False, window: int | None = None) -> int:
    lo, hi = key_ranges(n_q, n_k, causal, window)
    return int(np.clip(hi - lo + 1, 0, None).sum())


def mask_options(case: Case, role: str) -> dict:
    """The baseline uses SDPA's default causal dispatch (``is_causal=True``: top-left, the same mask
    as bottom-right when N_q = N_k) and, on window cases, no window (SDPA has no window fast path)."""
    if role == "sdpa-default":
        return {"causal": "top_left" if case.causal else None}
    return {"causal": "bottom_right" if case.causal else None, "window": (case.window - 1, 0) if case.window else None}


def work(case: Case, role: str, itemsize: int) -> tuple[str, float]:
    """(unit, amount) a call does: FLOPs over the visible pairs, or for decode the bytes of K and V.
    A pair costs 4 D FLOPs forward (``QK^T``, ``PV``) and 10 D backward (``QK^T`` again, ``dO V^T``,
    ``P^T dO``, ``dS K``, ``dS^T Q``): 14 D for a backward row (forward + backward)."""
    if case.kind == "decode":
        return "bytes", 2.0 * case.b * case.kv_heads * case.n * case.d * itemsize
    opts = mask_options(case, role)
    window = None if opts.get("window") is None else opts["window"][0] + 1
    per_pair = 14.0 if case.kind == "backward" else 4.0
    return "flops", per_pair * case.b * case.h * case.d * visible_pairs(
        case.n, case.n, opts["causal"] is not None, window
    )


def scores_floor(q, k, causal: bool, tile: int = FLOOR_TILE):
    """Not attention: the least that the ``torch`` backend's kind of algorithm does. Each key tile's
    float32 scores, for the rows that see the tile, written to device memory once and read once
    (their row maximum). The exp, the row sums, P and ``P @ V`` come on top, so a tiled
    implementation that keeps float32 scores in device memory is slower than this: a ratio to SDPA
    below a target here means that no such implementation can meet it. (Scores rounded to 16 bits,
    or chunks small enough to stay in L2, would move less; they are outside what this bounds.)"""
    import torch

    from attnspec.backends.torch_tiled.kernel import grouped_matmul

    b, h_q, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    q = q.reshape(b, h_kv, h_q // h_kv, n_q, d)  # grouped as the backend groups GQA heads
    tile = FLOOR_CAUSAL_TILE if causal else tile
    _, hi = key_ranges(n_q, n_k, causal, None)
    top = None
    for c0 in range(0, n_k, tile):
        first_row = int(np.searchsorted(hi, c0))  # hi is non-decreasing: rows from here see the tile
        top = grouped_matmul(q[:, :, :, first_row:], k[:, :, c0 : c0 + tile].transpose(-1, -2), torch.float32).amax(-1)
    return top
