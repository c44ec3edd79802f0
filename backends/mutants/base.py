"""The base class of the mutants: a subclass that names the clause it ``breaks`` registers itself."""

from __future__ import annotations

import re

from attnspec.backends.numpy_backend import NumpyBackend
from attnspec.clauses import attach

#: name -> mutant class, filled as the mutant modules are imported; the name is the class name in
#: snake case without "Mutant" (``CausalOffByOneMutant`` -> ``causal_off_by_one``).
MUTANTS: dict[str, type] = {}


class Mutant(NumpyBackend):
    """The numpy backend with one deliberate error; a subclass sets ``breaks`` to the clause it breaks.

    Defining the subclass registers it (in :data:`MUTANTS` and against its clause in the catalog);
    a helper base that sets no ``breaks`` of its own is not registered.
    """

    breaks: str = ""
    #: The named convention this mutant follows instead of the spec's, if it is one that real
    #: kernels implement (``conformance/conventions.py`` then diagnoses it by this name).
    convention: str = ""
    #: For a mutant wrong only where two options meet: the clauses of those options, which option
    #: isolation (``conformance/isolation.py``) must report as the smallest failing set.
    needs: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "breaks" not in vars(cls):
            return
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.removesuffix("Mutant")).lower()
        if name in MUTANTS:
            raise ValueError(f"two mutants are named {name!r}: {MUTANTS[name].__qualname__} and {cls.__qualname__}")
        attach(cls.breaks, "mutant", cls)
        MUTANTS[name] = cls
