r"""The formulas of the hierarchical clauses: NSA, routed attention, LSH (see :mod:`.formulas`)."""

from __future__ import annotations

HIERARCHICAL: dict[str, tuple[str, str]] = {
    "nsa.combine": (
        "c8754a8b70ec",
        r"""
        \mathrm{out}_{bhi} &= \mathrm{gates}_{bhi0}\; o^{\mathrm{cmp}}_{bhi} + \mathrm{gates}_{bhi1}\; o^{\mathrm{slc}}_{bhi}
        + \mathrm{gates}_{bhi2}\; o^{\mathrm{win}}_{bhi} \\
        t_i &= i + N_k - N_q,\qquad N_q \le N_k
        """,
    ),
    "nsa.compress": (
        "d766480d4bbe",
        r"""
        x^{\mathrm{cmp}}_c &= \begin{cases}
        \tfrac{1}{l} \sum_{r < l} x_{cd + r} & w = \text{None} \\
        \sum_{r < l} w_r\, x_{cd + r} & w \in \mathbb{R}^{l} \\
        \operatorname{flatten}(x_{cd : cd + l})\, w & w \in \mathbb{R}^{lD \times D}
        \end{cases}
        \qquad c = 0, \dots, N_c - 1,\quad N_c = \begin{cases} \lfloor (N_k - l) / d \rfloor + 1 & N_k \ge l \\ 0 & N_k < l \end{cases} \\
        c \in V_{\mathrm{cmp}}(i) &\iff cd + l - 1 \le t_i,\qquad
        o^{\mathrm{cmp}}_{bhi} = \operatorname{sdpa}\big(q_{bhi}, k^{\mathrm{cmp}}, v^{\mathrm{cmp}}\big) \text{ over } V_{\mathrm{cmp}}(i)
        """,
    ),
    "nsa.select": (
        "96333bd21361",
        r"""
        W_{cj} &= \big\lvert [cd, cd + l) \cap [j l', (j + 1) l') \big\rvert \,/\, l,\qquad
        \mathrm{imp}_{bgij} = \sum_{h:\ g(h) = g} \sum_c W_{cj}\; p^{\mathrm{cmp}}_{bhic} \\
        C_i &= \{\, j : j l' \le t_i \,\},\qquad
        F_i = \{\, j \in C_i : j < \mathrm{init\_blocks} \;\vee\; J_i - \mathrm{local\_blocks} < j \le J_i \,\},
        \quad J_i = \lfloor t_i / l' \rfloor \\
        S(b, g, i) &= F_i \,\cup\, \operatorname{top}_{\mathrm{top\_n} - \lvert F_i \rvert}\big(C_i \setminus F_i;\ \mathrm{imp}_{bgi}\big)
        """,
    ),
    "nsa.select.ties": (
        "823608bf0654",
        r"""
        j \text{ ranks before } j' \iff \mathrm{imp}_j > \mathrm{imp}_{j'}
        \;\vee\; \big(\mathrm{imp}_j = \mathrm{imp}_{j'} \,\wedge\, j < j'\big)
        """,
    ),
    "nsa.selected": (
        "a3688db9ab51",
        r"""
        V_{\mathrm{slc}}(i) = \{\, j : \lfloor j / l' \rfloor \in S(b, g(h), i) \,\wedge\, j \le t_i \,\},\qquad
        o^{\mathrm{slc}}_{bhi} = \operatorname{sdpa} \text{ over } V_{\mathrm{slc}}(i)
        """,
    ),
    "nsa.window": (
        "475e0a5cf06e",
        r"""
        V_{\mathrm{win}}(i) = \{\, j : t_i - w < j \le t_i \,\},\qquad
        o^{\mathrm{win}} = \operatorname{sdpa}\big(q, k, v, \mathrm{causal} = \text{"bottom_right"}, \mathrm{window} = (w - 1, 0)\big)
        """,
    ),
    "routed.assign": (
        "50dced4fedc1",
        r"""
        \operatorname{assign}_h(x) &= \operatorname*{arg\,max}_c\; \frac{x}{\lVert x \rVert} \cdot
        \frac{\mathrm{centroids}_{hc}}{\lVert \mathrm{centroids}_{hc} \rVert}
        \quad \text{(ties: the lowest } c\text{)} \\
        \mathrm{q\_clusters}_{bhi} &= \operatorname{assign}_h(q_{bhi}),\qquad
        \mathrm{k\_clusters}_{bhj} = \operatorname{assign}_h(k_{b\,g(h)\,j})
        """,
    ),
    "routed": (
        "f895fa11e5e6",
        r"""
        V(i) &= \{\, j : \mathrm{k\_clusters}_{bhj} = \mathrm{q\_clusters}_{bhi} \,\} \cap V_{\mathrm{causal}}(i) \\
        (\mathrm{out}, \mathrm{lse}) &= \operatorname{sdpa}(q, k, v, \mathrm{scale}, \mathrm{causal}, \mathrm{mask} = V)
        """,
    ),
    "lsh.buckets": (
        "412e44bfe236",
        r"""
        y = \mathrm{qk}_{bhi}\, \mathrm{rotations}_r \in \mathbb{R}^{n_{\text{buckets}} / 2},\qquad
        \mathrm{buckets}_{bhri} = \operatorname*{arg\,max}\, [\,y;\, -y\,] \quad \text{(ties: the lowest index)}
        """,
    ),
    "lsh.chunks": (
        "1cb60ce8ec30",
        r"""
        k_j &= \mathrm{qk}_j / \lVert \mathrm{qk}_j \rVert,\qquad s(i, j) = \mathrm{scale}\; \mathrm{qk}_i \cdot k_j,\qquad
        \mathrm{chunk}_r(j) = \lfloor \mathrm{rank}_r(j) / \mathrm{chunk\_len} \rfloor \\
        P_r(i) &= \{\, j : \mathrm{bucket}_r(j) = \mathrm{bucket}_r(i),\
        \mathrm{chunk}_r(i) - 1 \le \mathrm{chunk}_r(j) \le \mathrm{chunk}_r(i)\ [,\ j \le i] \,\}
        """,
    ),
    "lsh.self_exclusion": (
        "1c11d2271934",
        r"""
        O_r(i) = P_r(i) \setminus \{i\},\qquad
        \forall r:\ O_r(i) = \emptyset \;\Rightarrow\; \mathrm{out}_i = v_i
        """,
    ),
    "lsh.rounds": (
        "8979514835d8",
        r"""
        U(i) &= \textstyle\bigcup_{r} O_r(i) \\
        \mathrm{out}_i &= \sum_{j \in U(i)} \frac{e^{s(i, j)}}{\sum_{j' \in U(i)} e^{s(i, j')}}\, v_j \\
        &= \textstyle\sum_r e^{z_r - z}\, o_r,\quad z = \ln \sum_r e^{z_r},\quad
        (o_r, z_r) = \text{attention over } O_r(i) \text{ with bias } -\ln N_{ij}
        """,
    ),
}
