r"""Clause rules in LaTeX, written for the docs until the catalog carries math of its own.

Each formula is bound to the clause text it was written for (the text's SHA-256 prefix): when the
text changes, the formula is left off its page and ``tests/test_docs.py`` names it, so a stale
formula is never shown. Notation: ``V(i)`` the visible keys of query ``i``, ``o_b`` the offset
``N_k(b) - N_q(b)`` of the effective lengths.
"""

from __future__ import annotations

import hashlib

from attnspec.clauses import CATALOG

FORMULAS: dict[str, tuple[str, str]] = {
    "sdpa": (
        "87521f070575",
        r"s_{ij} = \operatorname{cap}\!\big(\mathrm{scale}\; q_{bhi} \cdot k_{b\,g(h)\,j}\big) + \mathrm{bias}_{bhij} + \mathrm{alibi}(b, h, i, j),"
        r"\quad \operatorname{cap}(x) = c \tanh(x / c) \text{ (softcap } c \text{ given) or } x \\"
        r"\mathrm{lse}_{bhi} = \ln \sum_{j \in V(i)} e^{s_{ij}},"
        r"\quad o_{bhi} = \sum_{j \in V(i)} e^{s_{ij} - \mathrm{lse}_{bhi}}\, v_{b\,g(h)\,j}",
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


def fingerprint(clause_id: str) -> str:
    return hashlib.sha256(CATALOG[clause_id].text.encode()).hexdigest()[:12]


def stale() -> list[str]:
    """The formulas whose clause text changed (or whose clause is gone) since they were written."""
    return [cid for cid, (fp, _) in FORMULAS.items() if cid not in CATALOG or fingerprint(cid) != fp]


def math(clause_id: str) -> str:
    """The clause's ``.. math::`` block, or nothing where there is none or it is stale."""
    if clause_id not in FORMULAS or clause_id in stale():
        return ""
    return f".. rubric:: In math\n\n.. math::\n\n   {FORMULAS[clause_id][1]}\n\n"
