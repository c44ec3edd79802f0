r"""The formulas of the ``sparse`` clauses (see :mod:`.formulas`).

A pattern is a predicate ``visible(b, h, p, j)`` over the query's position ``p = i + N_k - N_q``
(bottom-right aligned) and the key ``j``; brackets ``[\,\cdot\,]`` mark a term that applies only
with ``causal``.
"""

from __future__ import annotations

SPARSE: dict[str, tuple[str, str]] = {
    "sparse": (
        "42dd2a943e86",
        r"""
        \operatorname{sparse}(q, k, v) &= \operatorname{sdpa}\big(q, k, v, \mathrm{scale},
        \mathrm{mask} = \mathrm{sparse\_mask}(\mathrm{pattern}, N_q, N_k, \dots)\big),
        \qquad N_q \le N_k \\
        j \in V(i) &\iff \operatorname{visible}(b, h, i + N_k - N_q, j)
        """,
    ),
    "sparse.mask": (
        "af359d14d6e5",
        r"""
        \mathrm{sparse\_mask}(\mathrm{pattern}, n_q, n_k)_{bhij} = \operatorname{visible}(b, h, i + n_k - n_q, j),
        \qquad 0 \le n_q \le n_k,\quad \text{shape } (B_p, H_p, n_q, n_k)
        """,
    ),
    "sparse.dilated": (
        "468c57e8d48a",
        r"""
        \operatorname{visible}(b, h, p, j) = \big[(p - j) \bmod d = 0\big] \wedge \lvert p - j \rvert \le w d
        \;\big[\wedge\; j \le p\big], \qquad d = \mathrm{dilation}_h \text{ or } \mathrm{dilation}
        """,
    ),
    "sparse.longformer": (
        "5f20b262563c",
        r"\operatorname{visible}(b, h, p, j) = \lvert p - j \rvert \le w \;\vee\; g_{bp} \;\vee\; g_{bj}",
    ),
    "sparse.bigbird": (
        "277030d392b3",
        r"""
        R &= \lfloor p / \mathrm{block} \rfloor,\quad C = \lfloor j / \mathrm{block} \rfloor,
        \quad n_{\text{blocks}} = \lceil N_k / \mathrm{block} \rceil \\
        \operatorname{visible}(b, h, p, j) &= \lvert R - C \rvert \le \mathrm{window\_blocks}
        \;\vee\; R \in \mathrm{global\_blocks} \;\vee\; C \in \mathrm{global\_blocks}
        \;\vee\; C \in \mathrm{random\_blocks}[h, R, :]
        """,
    ),
    "sparse.strided": (
        "4446d4ba9c1f",
        r"""
        A_1(p) &= \{\, j : \max(0, p - l) \le j \le p \,\},\qquad
        A_2(p) = \{\, j \le p : (p - j) \bmod l = 0 \,\} \\
        \operatorname{visible}(b, h, p, j) &= j \in \begin{cases}
        A_1(p) \cup A_2(p) & \mathrm{factor} = \text{merged} \\
        A_1(p) & \mathrm{factor} = \text{a1} \\
        A_2(p) & \mathrm{factor} = \text{a2} \end{cases}
        """,
    ),
    "sparse.fixed": (
        "ec12dcbd03d9",
        r"""
        A_1(p) &= \{\, j \le p : \lfloor j / l \rfloor = \lfloor p / l \rfloor \,\},\qquad
        A_2(p) = \{\, j \le p : j \bmod l \ge l - c \,\},\qquad 1 \le c \le l \\
        \operatorname{visible}(b, h, p, j) &= j \in \begin{cases}
        A_1(p) \cup A_2(p) & \mathrm{factor} = \text{merged} \\
        A_1(p) & \mathrm{factor} = \text{a1} \\
        A_2(p) & \mathrm{factor} = \text{a2} \end{cases}
        """,
    ),
    "sparse.block_sparse": (
        "3a9646da8419",
        r"""
        \operatorname{visible}(b, h, p, j) = \mathrm{layout}\big[h, \lfloor p / \mathrm{block\_q} \rfloor,
        \lfloor j / \mathrm{block\_k} \rfloor\big], \qquad
        \mathrm{layout} \in \{0, 1\}^{H_l \times \lceil N_k / \mathrm{block\_q} \rceil \times \lceil N_k / \mathrm{block\_k} \rceil}
        """,
    ),
    "sparse.prefix_lm": (
        "87f35945d619",
        r"\operatorname{visible}(b, h, p, j) = j < \mathrm{prefix\_lens}_b \;\vee\; j \le p",
    ),
    "sparse.document": (
        "83c7c6e9b0b5",
        r"""
        \operatorname{visible}(b, h, p, j) &= \big[\mathrm{doc}_{bp} = \mathrm{doc}_{bj}\big] \;\big[\wedge\; j \le p\big] \\
        \mathrm{doc}_j &= \max\{\, d : \mathrm{cu}_d \le j \,\} \quad \text{(from cumulative offsets } \mathrm{cu}\text{)}
        """,
    ),
    "sparse.chunked": (
        "912443bd0524",
        r"""
        \operatorname{visible}(b, h, p, j) = \big[\lfloor p / c \rfloor = \lfloor j / c \rfloor\big] \;\big[\wedge\; j \le p\big]
        \qquad (= \text{sparse.document with } \mathrm{doc}_j = \lfloor j / c \rfloor)
        """,
    ),
    "sparse.cost": (
        "fad56ccdfed7",
        r"""
        \max_i \lvert V(i) \rvert \le K \text{ independent of } N \;\Rightarrow\;
        \mathrm{peak}_{\text{extra}}(N) = O(N), \quad N = N_q = N_k
        \quad \text{(fixed } B, H, D \text{ and pattern budget)}
        """,
    ),
}
