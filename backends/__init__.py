"""Backends: implementations that register against the spec.

One module (or folder) per backend. Each exposes a :class:`attnspec.Backend` subclass or a
factory; :data:`attnspec.registry.BUILTINS` maps the built-in names to them, and installed
packages add theirs through the ``attnspec.backends`` entry-point group. :mod:`.mutants` holds
deliberately wrong backends that prove the suite catches what it claims to catch.
"""

#: The forward clauses of ``sdpa`` that a dense attention kernel implements: every option.
SDPA_FORWARD_CLAUSES = (
    "sdpa",
    "sdpa.scale",
    "sdpa.lse",
    "sdpa.fully_masked",
    "sdpa.gqa",
    "sdpa.mask",
    "sdpa.bias",
    "sdpa.softcap",
    "sdpa.alibi",
    "sdpa.causal.*",
    "sdpa.window",
    "sdpa.padding",
)
