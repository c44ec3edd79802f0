r"""The formulas of the Linformer and Transformer-XL clauses (see :mod:`.formulas`)."""

from __future__ import annotations

LOWRANK: dict[str, tuple[str, str]] = {
    "linformer": (
        "67fc24c6fe43",
        r"""
        \mathrm{k\_proj}_{bg} &= E\, k_{bg},\qquad \mathrm{v\_proj}_{bg} = F\, v_{bg},
        \qquad E, F \in \mathbb{R}^{k_{\text{proj}} \times N} \\
        \mathrm{out} &= \operatorname{sdpa}(q, \mathrm{k\_proj}, \mathrm{v\_proj}, \mathrm{scale})
        = \operatorname{softmax}\!\big(\mathrm{scale}\; Q (E K)^{\top}\big)\, (F V)
        """,
    ),
    "linformer.cost": (
        "d005cf500d5f",
        r"""
        \mathrm{peak}_{\text{extra}}(N) = O(N) \quad \text{for fixed } k_{\text{proj}}, B, H, D,
        \qquad E K \in \mathbb{R}^{k_{\text{proj}} \times D_{qk}} \text{ formed first}
        """,
    ),
    "xl.memory": (
        "52fb31613073",
        r"""
        \mathrm{out} &= \operatorname{sdpa}\big(q, [\mathrm{mem\_k}; k], [\mathrm{mem\_v}; v],
        \mathrm{causal} = \text{"bottom_right"}, \mathrm{scale}\big) \\
        j \in V(i) &\iff j \le i + M
        """,
    ),
    "xl.recurrence": (
        "487876bb1c14",
        r"""
        \text{segment } s &= [\, sL,\ \min((s + 1)L, N) \,),\qquad \text{its memory} = [\, \max(0, sL - M),\ sL \,) \\
        \operatorname{visible}(i, j) &\iff L \lfloor i / L \rfloor - M \le j \le i
        """,
    ),
}
