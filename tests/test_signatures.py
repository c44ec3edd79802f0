"""The reference and the built-in backends take each operation's arguments as the spec states them.

Checked by inspection (no GPU, no call): every parameter of the operation is accepted under its
name and kind, in the stated order for positional ones; a stated default is kept; no extra
parameter is required. ``**options`` in the spec (``**sdpa_options``, ``**pattern_params``) names
a set the spec lists elsewhere: an implementation may spell it out or take ``**kwargs``. A
backend may leave out an optional keyword (``return_lse`` where it does not declare ``sdpa.lse``):
the suite passes one only where the backend declares the clause that needs it; the reference
takes every one.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from attnspec import CATALOG
from attnspec import reference as _references  # noqa: F401 (importing it registers every reference)
from attnspec.clauses import REFERENCES, operation_signature
from attnspec.registry import BUILTINS

P = inspect.Parameter
BACKENDS = {name: path for name, path in BUILTINS.items() if name != "mutant"}


def mismatches(spec: inspect.Signature, impl: inspect.Signature, *, optional_may_be_absent: bool = False) -> list[str]:
    """How ``impl`` fails to accept the arguments ``spec`` states (empty when it accepts them)."""
    params = impl.parameters
    takes_kwargs = any(p.kind is P.VAR_KEYWORD for p in params.values())
    positional = [p.name for p in spec.parameters.values() if p.kind is P.POSITIONAL_OR_KEYWORD]
    impl_positional = [p.name for p in params.values() if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    problems = (
        []
        if impl_positional[: len(positional)] == positional
        else [f"positional parameters {impl_positional} do not start with {positional}"]
    )
    for p in spec.parameters.values():
        if p.kind is P.VAR_KEYWORD or p.kind is P.POSITIONAL_OR_KEYWORD:
            continue
        mine = params.get(p.name)
        if mine is None:
            absent_ok = takes_kwargs or (optional_may_be_absent and p.default is not P.empty)
            problems += [] if absent_ok else [f"no parameter {p.name!r}"]
        elif mine.kind is P.POSITIONAL_ONLY:
            problems.append(f"{p.name!r} cannot be passed by keyword")
        elif p.default is not P.empty and mine.default is not P.empty and mine.default != p.default:
            problems.append(f"{p.name!r} defaults to {mine.default!r}, the spec says {p.default!r}")
        elif p.default is not P.empty and mine.default is P.empty:
            problems.append(f"{p.name!r} is required; the spec gives it the default {p.default!r}")
    stated = set(spec.parameters)
    extra = [
        p.name
        for p in params.values()
        if p.name not in stated and p.default is P.empty and p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
    ]
    return problems + [f"requires parameter(s) {extra} the spec does not state"] * bool(extra)


def backend_class(name: str) -> type:
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def declared_ops(cls) -> list[str]:
    from attnspec.clauses import expand

    return sorted({CATALOG[c].op for c in expand(cls.clauses)})


@pytest.mark.parametrize("op", sorted(REFERENCES))
def test_reference_takes_the_stated_arguments(op):
    assert mismatches(operation_signature(op), inspect.signature(REFERENCES[op])) == []


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_builtin_backend_methods_take_the_stated_arguments(name):
    if name != "numpy":
        pytest.importorskip("torch")
    cls = backend_class(name)
    problems = {}
    for op in declared_ops(cls):
        method = inspect.signature(getattr(cls, op))
        method = method.replace(parameters=list(method.parameters.values())[1:])  # without self
        problems[op] = mismatches(operation_signature(op), method, optional_may_be_absent=True)
    assert {op: p for op, p in problems.items() if p} == {}


def test_mismatches_are_found():
    spec = inspect.signature(lambda q, k, *, scale=None, causal=None, **options: None)
    assert mismatches(spec, inspect.signature(lambda q, k, *, scale=None, causal=None: None)) == []
    assert mismatches(spec, inspect.signature(lambda k, q, *, scale=None, causal=None: None))
    assert mismatches(spec, inspect.signature(lambda q, k, *, scale=1.0, causal=None: None))
    assert mismatches(spec, inspect.signature(lambda q, k, *, causal=None: None))
    assert mismatches(spec, inspect.signature(lambda q, k, *, causal=None: None), optional_may_be_absent=True) == []
    assert mismatches(spec, inspect.signature(lambda q, k, *, scale=None, causal=None, extra: None))
    assert mismatches(spec, inspect.signature(lambda q, k, **kw: None)) == []
