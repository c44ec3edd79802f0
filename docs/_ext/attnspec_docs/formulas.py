r"""Clause rules in LaTeX, written for the docs until the catalog carries math of its own.

Each formula is bound to the clause text it was written for (the text's SHA-256 prefix): when the
text changes, the formula is left off its page and ``tests/test_docs.py`` names it, so a stale
formula is never shown. The formulas live in one module per family (``formulas_*.py``); a formula
is one display, its lines separated by ``\\`` and aligned at ``&``.

Notation, shared by every family: ``V(i)`` the visible keys of query ``i``, ``o_b`` the offset
``N_k(b) - N_q(b)`` of the effective lengths, ``g(h)`` the KV head of query head ``h``
(``sdpa.gqa``), ``s_{ij}`` the final score, ``\operatorname{sdpa}`` the ``sdpa`` clause.

Clauses with nothing mathematical to state have no formula (:data:`NONE`, with the reason).
"""

from __future__ import annotations

import hashlib

from attnspec.clauses import CATALOG

from .formulas_cp import CP
from .formulas_flash import FLASH
from .formulas_hierarchical import HIERARCHICAL
from .formulas_linear import LINEAR
from .formulas_lowrank import LOWRANK
from .formulas_positional import MULTIHEAD, POSITIONAL
from .formulas_retention import RETENTION
from .formulas_sdpa import GRADIENTS, SDPA
from .formulas_sparse import SPARSE

#: Clause ID -> (fingerprint of the clause text it was written for, LaTeX).
FORMULAS: dict[str, tuple[str, str]] = {
    **SDPA,
    **GRADIENTS,
    **FLASH,
    **SPARSE,
    **HIERARCHICAL,
    **LINEAR,
    **LOWRANK,
    **POSITIONAL,
    **MULTIHEAD,
    **RETENTION,
    **CP,
}

#: Clause ID -> why it has no formula.
NONE: dict[str, str] = {}


def fingerprint(clause_id: str) -> str:
    return hashlib.sha256(CATALOG[clause_id].text.encode()).hexdigest()[:12]


def stale() -> list[str]:
    """The formulas whose clause text changed (or whose clause is gone) since they were written."""
    return [cid for cid, (fp, _) in FORMULAS.items() if cid not in CATALOG or fingerprint(cid) != fp]


def math(clause_id: str) -> str:
    """The clause's ``.. math::`` block, or nothing where there is none or it is stale."""
    if clause_id not in FORMULAS or clause_id in stale():
        return ""
    body = "\n".join(f"   {line.strip()}" for line in FORMULAS[clause_id][1].strip().splitlines())
    return f".. rubric:: In math\n\n.. math::\n\n{body}\n\n"
