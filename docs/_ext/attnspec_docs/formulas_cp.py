r"""The formulas of the context-parallel ``cp`` clauses (see :mod:`.formulas`).

``P`` ranks, ``C`` tokens a shard, ``N = P C``; ``pos(r, t)`` the global position of token ``t`` of
shard ``r``.
"""

from __future__ import annotations

CP: dict[str, tuple[str, str]] = {
    "cp": (
        "d812a25e80fb",
        r"""
        Q_{b,h,\mathrm{pos}(r, t)} &= q_{r,b,h,t} \quad (K, V \text{ likewise}),\qquad
        (O, L) = \operatorname{sdpa}(Q, K, V, \mathrm{scale}, \mathrm{causal},
        \mathrm{q\_lens} = \mathrm{kv\_lens} = \mathrm{seq\_lens}) \\
        \mathrm{out}_{r,b,h,t} &= O_{b,h,\mathrm{pos}(r, t)},\qquad \mathrm{lse}_{r,b,h,t} = L_{b,h,\mathrm{pos}(r, t)}
        """,
    ),
    "cp.layout.contiguous": (
        "ceafaff9fbd3",
        r"\mathrm{pos}(r, t) = rC + t,\qquad 0 \le t < C",
    ),
    "cp.layout.zigzag": (
        "556b964f040f",
        r"""
        \mathrm{pos}(r, t) &= \begin{cases} rc + t & 0 \le t < c \\ (2P - 1 - r)\, c + (t - c) & c \le t < C \end{cases},
        \qquad c = C / 2 \\
        \operatorname{rank}(i) &= \begin{cases} \lfloor i / c \rfloor & \lfloor i / c \rfloor < P \\
        2P - 1 - \lfloor i / c \rfloor & \text{otherwise} \end{cases}
        """,
    ),
    "cp.ring": (
        "9b87055ca243",
        r"""
        s &= 0, \dots, P - 1:\quad \text{rank } r \text{ holds the K/V shard of rank } (r - s) \bmod P,\quad
        (\mathrm{out}_s, \mathrm{lse}_s) = \text{attention over } V(i) \cap \text{that shard} \\
        (\mathrm{out}, \mathrm{lse}) &= \operatorname{merge}_{s}(\mathrm{out}_s, \mathrm{lse}_s) \quad (\text{flash.merge})
        = \operatorname{cp}
        """,
    ),
    "cp.causal.pairs": (
        "bc578ab15a94",
        r"""
        \text{queries } [a, a + n),\ \text{keys } [b, b + m):\quad
        \begin{cases} \text{full} & b + m - 1 \le a \\
        \text{skipped: } (0, -\infty) & b > a + n - 1 \\
        \text{diagonal: } j \le i \text{ (local)} & a = b,\ n = m \end{cases}
        """,
    ),
    "cp.lengths": (
        "6e2fb840a159",
        r"""
        \mathrm{pos}(r, t) \ge \mathrm{seq\_lens}_b &\;\Rightarrow\; \text{key never read};\quad
        \mathrm{out}_{r,b,h,t} = 0,\ \mathrm{lse}_{r,b,h,t} = -\infty \\
        \text{valid tokens of shard } r &= \text{its first } \big\lvert \{\, t : \mathrm{pos}(r, t) < \mathrm{seq\_lens}_b \,\} \big\rvert
        """,
    ),
    "cp.lse": (
        "38925cbee0d2",
        r"""
        \mathrm{lse}_{r,b,h,t} = \ln \sum_{j \in V(\mathrm{pos}(r, t))} e^{s_{\mathrm{pos}(r, t),\, j}}
        \qquad (j \text{ over the whole sequence};\ V = \emptyset \Rightarrow -\infty)
        """,
    ),
    "cp.ulysses": (
        "82ce8c15afb0",
        r"""
        & \text{rank } r:\ \text{query heads } \Big[\frac{r H_q}{P}, \frac{(r + 1) H_q}{P}\Big),\
        \text{KV heads } \Big[\frac{r H_{kv}}{P}, \frac{(r + 1) H_{kv}}{P}\Big),\qquad P \mid H_{kv} \\
        & \mathrm{out}_{\text{heads of } r} = \operatorname{sdpa}\big(Q_{\text{heads of } r}, K_{\text{KV heads of } r},
        V_{\text{KV heads of } r}\big) \text{ over all } N \text{ positions}
        """,
    ),
}
