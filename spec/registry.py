"""Finding a backend by name: built-ins, installed packages, or a user's own file.

``--backend`` accepts:

- a built-in name (``numpy``), optionally with a variant after a colon (``mutant:lse_base2``);
- a name registered by an installed package in the entry-point group ``attnspec.backends``;
- ``package.module:object`` or ``path/to/file.py:object`` for a kernel in the user's own code.

The object is a :class:`~attnspec.contract.Backend` instance, a subclass, or a factory returning
one; classes and factories are called with ``device=`` and ``variant=`` where they accept them.
A backend that cannot be imported raises :class:`~attnspec.contract.BackendError` with the cause;
nothing is ever substituted for it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path

from attnspec.contract import Backend, BackendError, validate

ENTRY_POINT_GROUP = "attnspec.backends"

#: Where the built-in backends live (``attnspec.backends``, the tree's ``backends/``).
BACKENDS_DIR = Path(__file__).resolve().parent / "backends"


def declared_builtins(root: Path = BACKENDS_DIR, package: str = "attnspec.backends") -> dict[str, str]:
    """Built-in backends, name -> ``"module:object"``: every module below ``root`` names what it
    registers in a literal top-level ``BACKENDS = {"name": "object"}``, read without importing it
    (heavy imports happen only when a backend is loaded). A new backend is its own file: no list
    elsewhere to edit. A name declared twice is an error naming both modules."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if "BACKENDS = " not in text:
            continue
        module = ".".join((package, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["BACKENDS"]:
                for name, obj in ast.literal_eval(node.value).items():
                    if name in found:
                        raise BackendError(f"backend {name!r} is declared by {found[name]} and by {module}:{obj}")
                    found[name] = f"{module}:{obj}"
    return found


BUILTINS = declared_builtins()


def available() -> dict[str, str]:
    """Every backend name that ``load_backend`` resolves without a path: built-ins and plugins."""
    names = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, ep.value)
    return names


def load_backend(spec: str, *, device: str | None = None) -> Backend:
    """Resolve ``spec`` (see the module docstring) to a validated backend on ``device``."""
    if not isinstance(spec, str) or not spec:
        raise BackendError(f"backend must be a non-empty string; got {spec!r}")
    names = available()
    name, _, variant = spec.partition(":")
    if name in names:
        target = names[name]
        obj = _import_object(target, f"backend {name!r} ({target})")
    elif variant:
        name, variant = spec, ""
        target, _, attr = spec.rpartition(":")
        obj = _load_from_file(target, attr) if target.endswith(".py") else _import_object(spec, spec)
    else:
        raise BackendError(
            f"unknown backend {spec!r}; known: {', '.join(sorted(names))}; "
            "or give 'package.module:object' or 'path/to/file.py:object'"
        )
    backend = _instantiate(obj, name, device, variant or None)
    return validate(backend)


def _import_object(target: str, label: str):
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # report any import failure, with its cause, as the backend's
        raise BackendError(f"{label} could not be imported: {type(exc).__name__}: {exc}") from exc
    return _attribute(module, attr, label)


def _load_from_file(path: str, attr: str):
    file = Path(path)
    if not file.is_file():
        raise BackendError(f"backend file {path!r} does not exist")
    module_name = f"attnspec_user_backend_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise BackendError(f"backend file {path!r} is not a Python module (a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise BackendError(f"backend file {path!r} failed to import: {type(exc).__name__}: {exc}") from exc
    return _attribute(module, attr, f"backend file {path!r}")


def _attribute(module, attr: str, label: str):
    if not attr:
        raise BackendError(f"{label}: name the backend object after a colon, e.g. 'file.py:MyBackend'")
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendError(f"{label} has no attribute {attr!r}") from None


def _instantiate(obj, name: str, device: str | None, variant: str | None) -> Backend:
    if isinstance(obj, Backend):
        if variant:
            raise BackendError(f"backend {name!r} is an instance and takes no variant; got {variant!r}")
        if device is not None:
            obj.device = device
        return obj
    if not callable(obj):
        raise BackendError(f"backend {name!r} is neither an attnspec.Backend nor a factory: {obj!r}")
    params = inspect.signature(obj).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {}
    if device is not None and (takes_all or "device" in params):
        kwargs["device"] = device
    if variant is not None:
        if not (takes_all or "variant" in params):
            raise BackendError(f"backend {name!r} takes no variant; got {variant!r}")
        kwargs["variant"] = variant
    try:
        return obj(**kwargs)
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"backend {name!r} failed to start: {type(exc).__name__}: {exc}") from exc
