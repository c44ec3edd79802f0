"""Mutants of the Triton kernels' source (:mod:`tests.source_mutants`): the suite must catch each
one (``tests/test_triton_backend.py``), in the interpreter on the CPU and compiled on a GPU."""

from __future__ import annotations

import attnspec.backends.triton as original
from tests.source_mutants import factory

#: name -> (file, the exact text, its replacement, the clause it breaks)
MUTATIONS = {
    # the masked blocks after the unmasked ones (the causal diagonal, the last partial key block)
    "diagonal_dropped": (
        "attention.py",
        "start, stop = full_hi, hi  # masked",
        "start, stop = full_hi, full_hi  # masked",
        "sdpa.causal.top_left",
    ),
    # the stored LSE left in base 2, the flash-attention tutorial's convention
    "lse_base2": (
        "attention.py",
        "(m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) * LN2",
        "(m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)))",
        "sdpa.lse",
    ),
}


def _factory(name: str):
    return factory(original, MUTATIONS, name, "TritonBackend", "triton-mutant")


diagonal_dropped = _factory("diagonal_dropped")
lse_base2 = _factory("lse_base2")
