r"""The formulas of the positional-encoding and multi-head clauses (see :mod:`.formulas`)."""

from __future__ import annotations

POSITIONAL: dict[str, tuple[str, str]] = {
    "pe.sinusoidal.interleaved": (
        "29e879819dc9",
        r"""
        w_c = \mathrm{base}^{-2c / \mathrm{dim}},\qquad
        \mathrm{pe}[p, 2c] = \sin(p\, w_c),\qquad \mathrm{pe}[p, 2c + 1] = \cos(p\, w_c),
        \qquad c = 0, \dots, \mathrm{dim}/2 - 1
        """,
    ),
    "pe.sinusoidal.concat": (
        "d12c9fcbec5e",
        r"""
        w_c = \mathrm{base}^{-2c / \mathrm{dim}},\qquad
        \mathrm{pe}[p, c] = \sin(p\, w_c),\qquad \mathrm{pe}[p, \mathrm{dim}/2 + c] = \cos(p\, w_c),
        \qquad c = 0, \dots, \mathrm{dim}/2 - 1
        """,
    ),
    "pe.sinusoidal.t2t": (
        "18fdfba1f774",
        r"""
        w_c = \mathrm{base}^{-c / (\mathrm{dim}/2 - 1)},\qquad
        \mathrm{pe}[p, c] = \sin(p\, w_c),\qquad \mathrm{pe}[p, \mathrm{dim}/2 + c] = \cos(p\, w_c),
        \qquad c = 0, \dots, \mathrm{dim}/2 - 1,\quad \mathrm{dim} \ge 4
        """,
    ),
    "pe.learned": (
        "fd39064657dc",
        r"""
        \mathrm{pe}[\dots, :] = \mathrm{table}[\mathrm{positions}[\dots], :],\qquad
        0 \le \mathrm{positions}[\dots] < \mathrm{max\_positions}
        """,
    ),
    "rope.half_split": (
        "908d17d30161",
        r"""
        \theta_c &= \mathrm{base}^{-2c / r},\quad a = p\, \theta_c,\quad c = 0, \dots, r/2 - 1 \\
        y_c &= x_c \cos a - x_{c + r/2} \sin a \\
        y_{c + r/2} &= x_{c + r/2} \cos a + x_c \sin a,\qquad y_c = x_c \ \text{ for } r \le c < D
        """,
    ),
    "rope.interleaved": (
        "79db05fe7293",
        r"""
        y_{2c} &= x_{2c} \cos a - x_{2c + 1} \sin a \\
        y_{2c + 1} &= x_{2c + 1} \cos a + x_{2c} \sin a,\qquad a = p\, \theta_c,\quad \theta_c = \mathrm{base}^{-2c / r}
        """,
    ),
    "rope.partial": (
        "6a6e7ab12de7",
        r"""
        \theta_c = \mathrm{base}^{-2c / \mathrm{rotary\_dim}},\qquad
        y_c = x_c \ \text{ for } \mathrm{rotary\_dim} \le c < D,\qquad
        \operatorname{rope}(q, m) \cdot \operatorname{rope}(k, n) = f(q, k, m - n)
        """,
    ),
    "alibi.slopes": (
        "4432c2d303ad",
        r"""
        \mathrm{slope}[h] &= 2^{-8 (h + 1) / n},\quad h = 0, \dots, n - 1 \qquad (n = 2^{e}) \\
        \mathrm{slope}[h] &= \begin{cases} 2^{-8 (h + 1) / m} & h < m \\
        2^{-8 (2(h - m) + 1) / (2m)} & m \le h < n \end{cases}
        \qquad (m = 2^{\lfloor \log_2 n \rfloor} < n)
        """,
    ),
    "alibi.bias": (
        "6a906de2aca8",
        r"""
        \mathrm{bias}_{hij} = \begin{cases} -\mathrm{slope}[h]\, \lvert i + \mathrm{offset} - j \rvert & \text{symmetric} \\
        \mathrm{slope}[h]\, (j - i - \mathrm{offset}) & \text{causal} \end{cases},
        \qquad \mathrm{offset} = N_k - N_q
        """,
    ),
    "t5.bucket": (
        "ed9c64787144",
        r"""
        \mathrm{rel} &= \mathrm{key} - \mathrm{query},\qquad (n, \beta, \rho) = \begin{cases}
        \big(\lfloor \mathrm{num\_buckets}/2 \rfloor,\ n\,[\mathrm{rel} > 0],\ \lvert \mathrm{rel} \rvert\big) & \text{bidirectional} \\
        \big(\mathrm{num\_buckets},\ 0,\ \max(-\mathrm{rel}, 0)\big) & \text{otherwise} \end{cases} \\
        \mathrm{bucket} &= \beta + \begin{cases} \rho & \rho < \mathrm{exact} \\
        \min\!\Big(\mathrm{exact} + \operatorname{trunc}_{\text{f32}}\Big(\dfrac{\ln(\rho / \mathrm{exact})}{\ln(\mathrm{max\_distance} / \mathrm{exact})}\,
        (n - \mathrm{exact})\Big),\ n - 1\Big) & \text{otherwise} \end{cases},
        \qquad \mathrm{exact} = \lfloor n / 2 \rfloor
        """,
    ),
    "t5.bias": (
        "f0e17d2f83e0",
        r"\mathrm{bias}[h, i, j] = \mathrm{table}\big[\mathrm{t5\_bucket}(\mathrm{k\_positions}_j - \mathrm{q\_positions}_i),\ h\big]",
    ),
    "shaw": (
        "56ca0855351b",
        r"""
        r(i, j) &= \operatorname{clip}(j - i, -\mathrm{max\_relative}, \mathrm{max\_relative}) + \mathrm{max\_relative} \\
        s_{ij} &= \mathrm{scale}\; q_i \cdot \big(k_j + \mathrm{rel\_k}[r(i, j)]\big),\qquad
        \mathrm{out}_i = \textstyle\sum_j \operatorname{softmax}_j(s_{i:})\, \big(v_j + \mathrm{rel\_v}[r(i, j)]\big)
        """,
    ),
}

MULTIHEAD: dict[str, tuple[str, str]] = {
    "mha": (
        "4e25f88e45f0",
        r"""
        q &= \mathrm{split\_heads}(x_q w_q, H),\quad k = \mathrm{split\_heads}(x_{kv} w_k, H_{kv}),\quad
        v = \mathrm{split\_heads}(x_{kv} w_v, H_{kv}) \\
        \mathrm{split\_heads}(y, H)_{bhnd} &= y_{bn,\, hD + d},\qquad
        \mathrm{out} = \mathrm{merge\_heads}\big(\operatorname{sdpa}(q, k, v, \dots)\big)\, w_o,\qquad
        \mathrm{merge\_heads} = \mathrm{split\_heads}^{-1}
        """,
    ),
}
