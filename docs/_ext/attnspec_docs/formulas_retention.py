r"""The formulas of the retention clauses (see :mod:`.formulas`); ``g = gammas[h]``, ``g^0 = 1``."""

from __future__ import annotations

RETENTION: dict[str, tuple[str, str]] = {
    "retention.parallel": (
        "2a3ccd953e33",
        r"""
        \mathrm{out}_{bhn} = \sum_{m \le n} g^{\,n - m}\, \mathrm{scale}\, (q_{bhn} \cdot k_{bhm})\, v_{bhm}
        + g^{\,n + 1}\, \mathrm{scale}\; q_{bhn}\, S_{0,bh},\qquad g = \mathrm{gammas}_h,\quad g^0 = 1
        """,
    ),
    "retention.recurrent": (
        "f4f9a882883d",
        r"""
        S_n = g\, S_{n-1} + k_n^{\top} v_n,\quad S_{-1} = S_0,\qquad \mathrm{out}_n = \mathrm{scale}\; q_n S_n
        """,
    ),
    "retention.chunkwise": (
        "662d34ec8322",
        r"""
        \mathrm{out}[c, r] &= \sum_{s \le r} g^{\,r - s}\, \mathrm{scale}\, (q_r \cdot k_s)\, v_s
        + g^{\,r + 1}\, \mathrm{scale}\; q_r R_{c-1} \\
        R_c &= g^{L_c} R_{c-1} + \sum_{s < L_c} g^{\,L_c - 1 - s}\, k_s^{\top} v_s,\qquad R_{-1} = S_0
        """,
    ),
    "retention.state": (
        "1e618c6b8607",
        r"S_{N-1} = g^{N} S_0 + \sum_{m < N} g^{\,N - 1 - m}\, k_{bhm}^{\top} v_{bhm}",
    ),
    "retention.multiscale": (
        "927409bb6572",
        r"\mathrm{gammas}_h = 1 - 2^{-5 - h},\qquad h = 0, \dots, \mathrm{num\_heads} - 1",
    ),
    "retention.cost": (
        "b06794e1247e",
        r"""
        \mathrm{peak}_{\text{extra}}(N) = O(N) \quad \text{(recurrent; chunkwise with fixed } \mathrm{chunk\_size}\text{; fixed } B, H, D_k, D_v\text{)}
        """,
    ),
}
