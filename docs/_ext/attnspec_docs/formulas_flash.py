r"""The formulas of the ``flash`` clauses (see :mod:`.formulas`)."""

from __future__ import annotations

FLASH: dict[str, tuple[str, str]] = {
    "flash.tiled": (
        "596d38c824aa",
        r"""
        (m, l, \mathrm{acc}) &\leftarrow (-\infty, 0, 0) \\
        m' &= \max\!\big(m, \max_{j} s_j\big) \\
        l' &= l\, e^{m - m'} + \textstyle\sum_j e^{s_j - m'} \\
        \mathrm{acc}' &= \mathrm{acc}\; e^{m - m'} + \textstyle\sum_j e^{s_j - m'}\, v_j
        \qquad (j \text{ over the key tile},\ e^{-\infty - (-\infty)} = 0) \\
        \mathrm{out} &= \mathrm{acc} / l,\quad \mathrm{lse} = m + \ln l
        \qquad (l = 0:\ \mathrm{out} = 0,\ \mathrm{lse} = -\infty)
        """,
    ),
    "flash.memory": (
        "42ce038ac6b1",
        r"""
        \mathrm{peak}_{\text{extra}}(N) = O(N), \quad N = N_q = N_k,
        \quad \text{for fixed } \mathrm{block\_q}, \mathrm{block\_k}, B, H, D
        """,
    ),
    "flash.merge": (
        "98abe5abfba6",
        r"""
        M &= \max_s \mathrm{lses}_s \\
        \mathrm{lse} &= M + \ln \textstyle\sum_s e^{\mathrm{lses}_s - M} \\
        \mathrm{out} &= \textstyle\sum_{s:\ \mathrm{lses}_s > -\infty} e^{\mathrm{lses}_s - \mathrm{lse}}\, \mathrm{outs}_s
        \qquad (\text{all } \mathrm{lses}_s = -\infty:\ \mathrm{out} = 0,\ \mathrm{lse} = -\infty)
        """,
    ),
    "flash.split_kv": (
        "90802cc58f41",
        r"""
        K_r &= \{\, j : rC \le j < \min((r + 1)C, N_k) \,\},
        \quad C = \lceil N_k / \mathrm{num\_splits} \rceil,\quad r = 0, \dots, \mathrm{num\_splits} - 1 \\
        (\mathrm{out}_r, \mathrm{lse}_r) &= \text{attention over } V(i) \cap K_r, \qquad
        \operatorname{merge}_r(\mathrm{out}_r, \mathrm{lse}_r) = \operatorname{sdpa}
        """,
    ),
    "flash.decode": (
        "31f1e8eefbb3",
        r"""
        \operatorname{decode}(q, \dots) &= \operatorname{sdpa}(q, k_{\text{cache}}, v_{\text{cache}},
        \mathrm{causal} = \text{"bottom_right"}, \mathrm{kv\_lens} = \mathrm{cache\_lens}) \\
        j \in V(i) &\iff j \le \mathrm{cache\_lens}_b - N_{\text{new}} + i
        """,
    ),
    "flash.paged": (
        "9fe0734c1fa5",
        r"""
        k_{bgt} &= \mathrm{k\_pages}\big[\mathrm{block\_table}_{b,\, \lfloor t / \mathrm{page\_size} \rfloor},\;
        t \bmod \mathrm{page\_size},\; g\big], \quad t < \mathrm{cache\_lens}_b \quad (v \text{ likewise}) \\
        \mathrm{paged\_decode}(q, \dots) &= \operatorname{decode}(q, k, v, \mathrm{cache\_lens}),
        \quad N_{\max} = \mathrm{max\_pages} \cdot \mathrm{page\_size} \\
        0 \le \mathrm{block\_table}_{bi} &< \mathrm{num\_pages}
        \quad \text{for } i < \lceil \mathrm{cache\_lens}_b / \mathrm{page\_size} \rceil
        """,
    ),
    "flash.paged.head_major": (
        "0f84c06491ae",
        r"""
        k_{bgt} = \mathrm{k\_pages}\big[\mathrm{block\_table}_{b,\, \lfloor t / \mathrm{page\_size} \rfloor},\;
        g,\; t \bmod \mathrm{page\_size}\big], \quad t < \mathrm{cache\_lens}_b
        """,
    ),
    "flash.paged.unused": (
        "5b4a74792531",
        r"""
        \text{read only: } & \mathrm{block\_table}_{bi},\ i < \lceil \mathrm{cache\_lens}_b / \mathrm{page\_size} \rceil \\
        & \text{slot } t \bmod \mathrm{page\_size} \text{ of page } \mathrm{block\_table}_{b,\,\lfloor t / \mathrm{page\_size} \rfloor},
        \ t < \mathrm{cache\_lens}_b
        """,
    ),
}
