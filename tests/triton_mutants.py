"""Mutants of the Triton kernels' source: a copy of the package with one line changed.

The suite must catch each one (``tests/test_triton_backend.py``). The model kernel carries no
switch for them: the mutation is applied to a copy of the source, which then runs the same way
(the interpreter on the CPU, the compiler on a GPU).
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
from pathlib import Path

import attnspec.backends.triton as original

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


def mutated_package(name: str):
    """Import a copy of ``attnspec.backends.triton`` with mutation ``name`` applied."""
    file, old, new, _ = MUTATIONS[name]
    root = Path(tempfile.mkdtemp(prefix="attnspec-triton-mutant-"))
    package = root / f"attnspec_triton_mutant_{name}"
    shutil.copytree(Path(original.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    text = (package / file).read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"mutation {name!r}: {old!r} occurs {text.count(old)} times in {file}, expected once")
    (package / file).write_text(text.replace(old, new))
    sys.path.insert(0, str(root))
    return importlib.import_module(package.name)


def _factory(name: str):
    def create(device=None):
        backend = mutated_package(name).TritonBackend(device=device)
        backend.name = f"triton-mutant:{name}"
        return backend

    return create


diagonal_dropped = _factory("diagonal_dropped")
lse_base2 = _factory("lse_base2")
