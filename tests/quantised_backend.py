"""SageAttention's arithmetic in NumPy, and three ways to get it wrong: for the tests of the ``int8`` class.

:class:`Int8Emulated` does what ``sageattn`` 1.0.6 does, not what the class's naive run does: it
smooths ``k`` by its mean over the keys (softmax cancels it; the quantisation does not), quantises
``q * scale * log2(e)`` per 128 query rows and ``k`` per 64 keys to int8 rounding half away from
zero, takes ``exp2`` of float32 scores with an online softmax over 64-key blocks, rounds the
unnormalised probabilities and ``V`` to float16 and stores each block's ``P V`` in float16. It
declares the ``int8`` class, as the ``sage`` adapter does. The mutants each change one thing.
"""

import numpy as np

import attnspec
from attnspec.reference.sdpa import prepare, visible

LOG2E = 1.4426950408889634
Q_BLOCK, K_BLOCK = 128, 64


def to_int8(x: np.ndarray, block: int, per_tensor: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 values, per-row scales)``: one scale per ``block`` rows of a head, or per tensor."""
    b, h, n, d = x.shape
    padded = np.pad(np.abs(x), ((0, 0), (0, 0), (0, (-n) % block), (0, 0)))
    absmax = padded.reshape(b, h, -1, block * d).max(axis=-1)
    scale = np.repeat(absmax, block, axis=2)[:, :, :n, None] / 127
    if per_tensor:
        scale = np.full_like(scale, np.abs(x).max() / 127)
    ints = x / np.where(scale > 0, scale, 1.0)
    return np.trunc(ints + 0.5 * np.sign(ints)).astype(np.int8), scale.astype(np.float32)


class Int8Emulated(attnspec.Backend):
    name = "int8-emulated"
    clauses = ("sdpa", "sdpa.scale", "sdpa.gqa", "sdpa.causal.top_left", "sdpa.causal.bottom_right")
    dtypes = ("float16", "bfloat16", "float32")
    tolerance_class = "int8"
    per_tensor = False

    def sdpa(self, q, k, v, *, scale=None, causal=None):
        problem = prepare(q, k, v, scale=scale, causal=causal)
        vis = visible(problem, range(problem.n_q), range(problem.n_k))
        s = self.scores(problem)
        out = self.softmax_pv(np.where(vis, s, -np.inf), np.asarray(v, np.float16))
        return out.astype(q.dtype)

    def scores(self, problem) -> np.ndarray:
        """float32 scores in base 2: int8 dot products times the two blocks' scales."""
        k = problem.k.astype(np.float32)
        k = k - k.mean(axis=2, keepdims=True)  # smooth_k
        q8, sq = to_int8(problem.q.astype(np.float32) * np.float32(problem.scale * LOG2E), Q_BLOCK, self.per_tensor)
        k8, sk = to_int8(k, K_BLOCK, self.per_tensor)
        group = problem.h_q // problem.h_kv
        k8, sk = np.repeat(k8, group, axis=1), np.repeat(sk, group, axis=1)
        dots = q8.astype(np.int32) @ np.swapaxes(k8.astype(np.int32), -1, -2)
        return self.dequantise(dots.astype(np.float32), sq, np.swapaxes(sk, -1, -2))

    def dequantise(self, dots, sq, sk):
        return dots * sq * sk

    def softmax_pv(self, s: np.ndarray, v16: np.ndarray) -> np.ndarray:
        """The online softmax over 64-key blocks: unnormalised P and each block's P V in float16."""
        v16 = np.repeat(v16, s.shape[1] // v16.shape[1], axis=1)
        m = np.full(s.shape[:-1] + (1,), -np.inf, np.float32)
        total = np.zeros_like(m)
        acc = np.zeros(s.shape[:-1] + v16.shape[-1:], np.float32)
        for start in range(0, s.shape[-1], K_BLOCK):
            block = s[..., start : start + K_BLOCK]
            new_m = np.maximum(m, self.block_max(block))
            shift = np.where(np.isneginf(new_m), 0, new_m)
            p = np.exp2(block - shift).astype(np.float32)
            alpha = np.exp2(np.where(np.isneginf(m), -np.inf, m - shift))
            total = total * alpha + p.sum(axis=-1, keepdims=True)
            partial = p.astype(np.float16).astype(np.float32) @ v16[:, :, start : start + K_BLOCK].astype(np.float32)
            acc = acc * alpha + partial.astype(np.float16)
            m = new_m
        return np.where(total > 0, acc / np.where(total > 0, total, 1), 0)

    def block_max(self, block: np.ndarray) -> np.ndarray:
        return block.max(axis=-1, keepdims=True)


class DropsScales(Int8Emulated):
    """Multiplies the int8 dot products out without the blocks' scales."""

    name = "int8-drops-scales"

    def dequantise(self, dots, sq, sk):
        return dots


class NoMaxSubtraction(Int8Emulated):
    """Exponentiates the scores without subtracting the row maximum (overflows past 2^128)."""

    name = "int8-no-max-subtraction"

    def block_max(self, block: np.ndarray) -> np.ndarray:
        return np.zeros(block.shape[:-1] + (1,), np.float32)


class PerTensorScales(Int8Emulated):
    """One int8 scale for all of ``q``, one for all of ``k``: an outlier block coarsens every other."""

    name = "int8-per-tensor"
    per_tensor = True
