r"""The formulas of the ``sdpa`` and gradient clauses (see :mod:`.formulas`)."""

from __future__ import annotations

SDPA: dict[str, tuple[str, str]] = {
    "sdpa": (
        "87521f070575",
        r"""
        s_{ij} &= \operatorname{cap}\!\big(\mathrm{scale}\; q_{bhi} \cdot k_{b\,g(h)\,j}\big) + \mathrm{bias}_{bhij} + \mathrm{alibi}(b, h, i, j),
        \quad \operatorname{cap}(x) = c \tanh(x / c) \text{ (softcap } c \text{ given) or } x \\
        \mathrm{lse}_{bhi} &= \ln \sum_{j \in V(i)} e^{s_{ij}},
        \quad o_{bhi} = \sum_{j \in V(i)} e^{s_{ij} - \mathrm{lse}_{bhi}}\, v_{b\,g(h)\,j}
        """,
    ),
    "sdpa.scale": (
        "881f582bf7cc",
        r"\mathrm{scale} = \begin{cases} \text{as given} \\ 1/\sqrt{D_{qk}} & \text{if None} \end{cases}",
    ),
    "sdpa.lse": (
        "27f90ccfda4d",
        r"\mathrm{lse}_{bhi} = \ln \sum_{j \in V(i)} \exp(s_{ij}), \qquad V(i) = \emptyset \Rightarrow \mathrm{lse}_{bhi} = -\infty",
    ),
    "sdpa.fully_masked": (
        "6b54cfd105e2",
        r"V(i) = \emptyset \;\Rightarrow\; o_{bhi} = 0,\quad \mathrm{lse}_{bhi} = -\infty",
    ),
    "sdpa.gqa": ("10580d7054e9", r"g(h) = \Big\lfloor \frac{h}{H_q / H_{kv}} \Big\rfloor"),
    "sdpa.mask": (
        "05c303782a7f",
        r"j \in V(i) \Rightarrow \mathrm{mask}_{bhij} = \mathrm{True}",
    ),
    "sdpa.bias": (
        "c38215e9c93c",
        r"""
        s_{ij} &= \operatorname{cap}\!\big(\mathrm{scale}\; q_{bhi} \cdot k_{b\,g(h)\,j}\big) + \mathrm{bias}_{bhij},
        \qquad \mathrm{bias}_{bhij} \in \mathbb{R} \cup \{-\infty\} \\
        \mathrm{bias}_{bhij} &\to \mathrm{bias}_{bhij} + c_{bhi}
        \;\Rightarrow\; o_{bhi} \text{ unchanged},\quad \mathrm{lse}_{bhi} \to \mathrm{lse}_{bhi} + c_{bhi}
        """,
    ),
    "sdpa.softcap": ("43b5a44a83a6", r"s \leftarrow c \tanh(s / c)"),
    "sdpa.alibi": ("5ac08a780e8e", r"\mathrm{alibi}(b, h, i, j) = -m_{bh}\, \lvert i + o_b - j \rvert"),
    "sdpa.causal.top_left": ("8e36f625ae51", r"j \in V(i) \iff j \le i"),
    "sdpa.causal.bottom_right": ("6c06e350494a", r"j \in V(i) \iff j \le i + o_b"),
    "sdpa.window": ("10b4f61323d0", r"j \in V(i) \iff i + o_b - \ell \le j \le i + o_b + r"),
    "sdpa.window.top_left": ("7c2145032e5b", r"j \in V(i) \iff i - \ell \le j \le i + r"),
    "sdpa.padding": (
        "b42fbf228e29",
        r"j \in V(i) \Rightarrow i < \mathrm{q\_lens}_b \,\wedge\, j < \mathrm{kv\_lens}_b",
    ),
}

GRADIENTS: dict[str, tuple[str, str]] = {
    "sdpa.grad": (
        "eb1ea37f4300",
        r"""
        R_{hij} &= \mathrm{scale}\; q_{hi} \cdot k_{gj},\quad g = g(h),\quad P_{hij} = e^{s_{ij} - \mathrm{lse}_{hi}} \,[j \in V(i)] \\
        D_{hi} &= \textstyle\sum_d \mathrm{dout}_{hid}\, \mathrm{out}_{hid},\quad
        dP_{hij} = \mathrm{dout}_{hi} \cdot v_{gj},\quad dS_{hij} = P_{hij}\,(dP_{hij} - D_{hi}) \\
        dR_{hij} &= dS_{hij}\,\big(1 - \tanh^2(R_{hij} / c)\big) \text{ (softcap } c\text{), else } dS_{hij} \\
        dq_{hi} &= \mathrm{scale} \textstyle\sum_j dR_{hij}\, k_{gj},\quad
        dk_{gj} = \mathrm{scale} \sum_{g(h) = g,\, i} dR_{hij}\, q_{hi},\quad
        dv_{gj} = \sum_{g(h) = g,\, i} P_{hij}\, \mathrm{dout}_{hi} \\
        \mathrm{dbias} &= dS \text{ summed over the axes the bias is broadcast along}
        """,
    ),
    "sdpa.grad.hidden": (
        "46fb6cc2e1eb",
        r"""
        j \notin \textstyle\bigcup_{g(h) = g,\, i} V(i) &\;\Rightarrow\; dk_{gj} = dv_{gj} = 0 \\
        V(i) = \emptyset \,\vee\, i \ge \mathrm{q\_lens}_b &\;\Rightarrow\; dq_{hi} = 0 \\
        j \notin V(i) &\;\Rightarrow\; \mathrm{dbias}_{bhij} = 0
        """,
    ),
    "sdpa.grad.gqa": (
        "d2c46097dd2a",
        r"""
        H_q = G\,H_{kv}:\qquad dk_{gj} = \sum_{h = gG}^{gG + G - 1} \sum_i \mathrm{scale}\; dR_{hij}\, q_{hi},
        \qquad dv_{gj} = \sum_{h = gG}^{gG + G - 1} \sum_i P_{hij}\, \mathrm{dout}_{hi}
        """,
    ),
    "sdpa.grad.scale": ("19de27428eee", r"dq = \mathrm{scale}\; dR\, k, \qquad dk = \mathrm{scale}\; dR^{\top} q"),
    "sdpa.grad.softcap": (
        "de5145824775",
        r"dR = dS \odot \big(1 - \tanh^2(R / c)\big), \qquad R = \mathrm{scale}\; q \cdot k",
    ),
    "sdpa.grad.bias": (
        "9c508fab3c8a",
        r"""
        \mathrm{dbias} &= \sum_{a \in A} dS, \qquad A = \text{the axes of } (B, H_q, N_q, N_k)
        \text{ along which bias was broadcast} \\
        \mathrm{dbias}_{ij} &= \sum_{b, h} dS_{bhij} \quad \text{for a bias of shape } (1, 1, N_q, N_k)
        """,
    ),
    "linear.grad": (
        "3c0b024a258d",
        r"""
        r_i &= \mathrm{den}_i + \epsilon,\quad
        dnum_i = \mathrm{dout}_i / r_i,\quad
        dden_i = -\textstyle\sum_d \mathrm{dout}_{id}\, \mathrm{out}_{id} / r_i
        \quad (dnum = \mathrm{dout},\ dden = 0 \text{ unnormalised}) \\
        dA &= (dnum\, v^{\top} + dden\, \mathbf{1}^{\top}) \odot M,\qquad
        df_q = dA\, f_k + dnum\, S_0^{\top} + dden\, z_0^{\top},\qquad df_k = dA^{\top} f_q \\
        dq &= \mathrm{scale}\; df_q \odot \phi'(q),\quad dk = df_k \odot \phi'(k),\quad
        dv = A^{\top} dnum,\quad dS_0 = f_q^{\top} dnum,\quad dz_0 = f_q^{\top} dden
        """,
    ),
    "retention.grad": (
        "45ec55ff2b76",
        r"""
        W &= \mathrm{scale}\,(q k^{\top}) \odot D,\qquad c_n = \mathrm{scale}\; g^{\,n + 1},\qquad
        dW = (\mathrm{dout}\, v^{\top}) \odot D \\
        dq &= \mathrm{scale}\; dW k + c \odot (\mathrm{dout}\, S_0^{\top}),\quad
        dk = \mathrm{scale}\; dW^{\top} q,\quad dv = W^{\top} \mathrm{dout},\quad
        dS_0 = \textstyle\sum_n c_n\, q_n^{\top} \mathrm{dout}_n
        """,
    ),
    "sparse.block_sparse.grad": (
        "d428c9c2ef8a",
        r"""
        \operatorname{sparse\_backward}(q, k, v, \mathrm{dout}) = \operatorname{sdpa\_backward}\big(q, k, v,
        \mathrm{dout};\ \mathrm{mask} = \mathrm{layout}[h, \lfloor p / \mathrm{block}_q \rfloor,
        \lfloor j / \mathrm{block}_k \rfloor]\big) \\
        j \notin \textstyle\bigcup_{g(h) = g,\, i} V(i) \;\Rightarrow\; dk_{gj} = dv_{gj} = 0,\qquad
        V(i) = \emptyset \;\Rightarrow\; dq_{hi} = 0
        """,
    ),
}
