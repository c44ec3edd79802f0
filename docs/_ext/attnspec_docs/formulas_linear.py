r"""The formulas of the linear-attention and Performer clauses (see :mod:`.formulas`)."""

from __future__ import annotations

LINEAR: dict[str, tuple[str, str]] = {
    "linear.parallel": (
        "601c617ff3d2",
        r"""
        f_q[i] &= \mathrm{scale}\; \phi(q_i),\qquad f_k[j] = \phi(k_j) \\
        S_i &= S_0 + \textstyle\sum_{j \in V(i)} f_k[j]^{\top} v_j,\qquad z_i = z_0 + \sum_{j \in V(i)} f_k[j] \\
        \mathrm{num}_i &= f_q[i]\, S_i,\qquad \mathrm{den}_i = f_q[i] \cdot z_i,\qquad
        \mathrm{out}_i = \begin{cases} \mathrm{num}_i / (\mathrm{den}_i + \varepsilon) & \text{normalize} \\
        \mathrm{num}_i & \text{otherwise} \end{cases}
        """,
    ),
    "linear.feature_map": (
        "4ad52e4dae61",
        r"""
        \phi_{\text{elu+1}}(x) = \begin{cases} x + 1 & x > 0 \\ e^{x} & x \le 0 \end{cases},\qquad
        \phi_{\text{relu}}(x) = \max(x, 0),\qquad \phi_{\text{identity}}(x) = x
        """,
    ),
    "linear.normalizer": (
        "a15bebc0578c",
        r"""
        \mathrm{out}_i = \begin{cases} \mathrm{num}_i / (\mathrm{den}_i + \varepsilon) & \mathrm{den}_i + \varepsilon > 0 \\
        0 & \mathrm{den}_i + \varepsilon = 0 \end{cases},\qquad
        \phi \ge 0,\ z_0 \ge 0,\ \varepsilon \ge 0 \;\Rightarrow\; \mathrm{den}_i \ge 0
        """,
    ),
    "linear.causal": (
        "2e93ffa75b0e",
        r"""
        S_i = S_0 + \textstyle\sum_{j \le i} f_k[j]^{\top} v_j,\qquad z_i = z_0 + \sum_{j \le i} f_k[j],
        \qquad N_q = N_k
        """,
    ),
    "linear.recurrent": (
        "252e37cbc54f",
        r"""
        (S, z) &\leftarrow (S_0, z_0);\quad t = 0, \dots, N - 1:\quad
        S \leftarrow S + f_k[t]^{\top} v_t,\quad z \leftarrow z + f_k[t] \\
        \mathrm{num}_t &= f_q[t]\, S,\qquad \mathrm{den}_t = f_q[t] \cdot z
        \qquad \text{(causal: read after the update; non-causal: after every key)}
        """,
    ),
    "linear.chunked": (
        "69bb1512aca9",
        r"""
        A_c &= \operatorname{tril}\big(f_q[c]\, f_k[c]^{\top}\big),\qquad
        \mathrm{num}_c = f_q[c]\, S + A_c\, v[c],\qquad \mathrm{den}_c = f_q[c]\, z + A_c \mathbf{1} \\
        S &\leftarrow S + f_k[c]^{\top} v[c],\qquad z \leftarrow z + f_k[c]^{\top} \mathbf{1},
        \qquad c = 0, \dots, \lceil N / C \rceil - 1 \text{ (causal)}
        """,
    ),
    "linear.state": (
        "4f0695e7a8b1",
        r"""
        S = S_0 + \textstyle\sum_{j} f_k[j]^{\top} v_j,\qquad z = z_0 + \sum_{j} f_k[j]
        \qquad \text{(over all keys)}
        """,
    ),
    "linear.cost": (
        "040683e73696",
        r"""
        \mathrm{peak}_{\text{extra}} = O\big(N (D_{qk} + D_v) + F D_v + C^2\big) \text{ per } (b, h)
        \qquad (\text{recurrent, chunked with fixed } C)
        """,
    ),
    "linear.efficient": (
        "76441e846c3d",
        r"""
        \rho_q[i, d] &= \frac{e^{q_{id}}}{\sum_e e^{q_{ie}}},\qquad
        \rho_k[j, d] = \frac{e^{k_{jd}}}{\sum_l e^{k_{ld}}} \\
        \mathrm{out} &= \rho_q(q)\, \big(\rho_k(k)^{\top} v\big)
        """,
    ),
    "performer.features": (
        "6b28bfd4b0df",
        r"""
        \phi(x)_f = \frac{1}{\sqrt{m}} \exp\!\Big(w_f \cdot x - \frac{\lVert x \rVert^2}{2}\Big),\quad f = 1, \dots, m,
        \qquad \mathbb{E}_{w_f \sim \mathcal{N}(0, I_D)}\big[\phi(x) \cdot \phi(y)\big] = e^{x \cdot y}
        """,
    ),
    "performer.orthogonal": (
        "014bc48fabec",
        r"""
        G_b &= Q_b R_b,\quad (R_b)_{cc} > 0,\qquad
        W_{bD + c,\, :} = \mathrm{norms}_{bD + c}\; Q_b[:, c],\qquad W_b W_b^{\top} = \operatorname{diag}(\mathrm{norms}_b^2) \\
        G_b &\text{ singular} \iff \exists c:\ \lvert (R_b)_{cc} \rvert \le D\, \varepsilon \max \lvert R_b \rvert,
        \quad \varepsilon = 2^{-52}
        """,
    ),
    "performer": (
        "02d69d531fd6",
        r"""
        q' &= q \sqrt{\mathrm{scale}},\qquad k' = k \sqrt{\mathrm{scale}},\qquad \mathrm{scale} = 1 / \sqrt{D_{qk}} \text{ by default} \\
        \mathrm{out}_i &= \frac{\phi(q'_i) \sum_{j \in V(i)} \phi(k'_j)^{\top} v_j}{\phi(q'_i) \cdot \sum_{j \in V(i)} \phi(k'_j)}
        \qquad (V(i) \text{ all keys, or } j \le i \text{ causal})
        """,
    ),
    "performer.estimator": (
        "88ff23d11152",
        r"""
        \mathbb{E}\big[\phi(x) \cdot \phi(y)\big] = e^{x \cdot y},\qquad
        \mathbb{E}\,\lvert \operatorname{performer} - \operatorname{sdpa} \rvert = O\big(m^{-1/2}\big)
        """,
    ),
}
