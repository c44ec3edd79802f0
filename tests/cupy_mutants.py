"""Mutants of the CUDA sources of the cupy backend (:mod:`tests.source_mutants`). They need a GPU;
the suite must catch each one there (the recorded run: ``docs/results/``), e.g.::

    pytest conformance --backend=tests/cupy_mutants.py:diagonal_off_by_one --clauses=sdpa.causal.top_left
"""

from __future__ import annotations

import attnspec.backends.cupy as original
from tests.source_mutants import factory

#: name -> (file, the exact text, its replacement, the clause it breaks)
MUTATIONS = {
    # the diagonal tile's causal mask off by one: each query also sees the next key
    "diagonal_off_by_one": (
        "csrc/common.cuh",
        "if (o.causal == 1 && d > 0) return false;",
        "if (o.causal == 1 && d > 1) return false;",
        "sdpa.causal.top_left",
    ),
    # the split-KV partials merged in base 2 (exp2 / log2 of natural-log LSEs)
    "merge_base2": (
        "csrc/merge.cu",
        "const float w = expf(ls - top);",
        "const float w = exp2f(ls - top);",
        "flash.merge",
    ),
}


def _factory(name: str):
    return factory(original, MUTATIONS, name, "CupyBackend", "cupy-mutant")


diagonal_off_by_one = _factory("diagonal_off_by_one")
merge_base2 = _factory("merge_base2")
