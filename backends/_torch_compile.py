"""``torch.compile`` with a recompile limit of its own, leaving PyTorch's global settings alone.

Dynamo recompiles a function for each new dtype, shape or stride pattern it guards on, up to
``torch._dynamo.config.recompile_limit`` (8) times; past it, the function silently runs eagerly,
which for a backend under test would check a different implementation. PyTorch 2.13 takes the
limit per compiled function (``torch.compile(recompile_limit=)``); on older versions the
process-wide limit is raised (never lowered) when a backend constructs its compiled function,
not when a module is imported. Code that PyTorch compiles on its own (FlexAttention's compiled
BlockMask builder) runs inside :func:`recompiles_up_to`.
"""

from __future__ import annotations

import inspect

import torch


def _limit_name() -> str:
    config = torch._dynamo.config
    return "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # before PyTorch 2.6


def compile_with_limit(fn, recompile_limit: int, **options):
    """``torch.compile(fn, **options)`` that recompiles up to ``recompile_limit`` times."""
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        return torch.compile(fn, recompile_limit=recompile_limit, **options)  # type: ignore[call-overload]
    name = _limit_name()
    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), recompile_limit))
    return torch.compile(fn, **options)


def recompiles_up_to(recompile_limit: int):
    """A context in which Dynamo's process-wide limit is at least ``recompile_limit``, restored after."""
    name = _limit_name()
    return torch._dynamo.config.patch(**{name: max(getattr(torch._dynamo.config, name), recompile_limit)})
