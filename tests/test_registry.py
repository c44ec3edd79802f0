"""Finding backends: built-ins, entry points, a user's module or file, and the contract checks."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from attnspec import CATALOG, Backend, BackendError, load_backend, registry
from tests.conftest import write_module


def test_numpy_declares_every_clause():
    backend = load_backend("numpy")
    assert backend.declared == frozenset(CATALOG)
    assert backend.device == "cpu"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(BackendError, match="unknown backend 'nope'.*numpy"):
        load_backend("nope")


def test_unknown_mutant_lists_the_mutants():
    with pytest.raises(BackendError, match="unknown mutant 'nope'.*lse_base2"):
        load_backend("mutant:nope")


def test_module_object():
    assert load_backend("attnspec.backends.numpy_backend:NumpyBackend").name == "numpy"


def test_module_that_does_not_import_is_an_error_naming_the_cause():
    with pytest.raises(BackendError, match="could not be imported: ModuleNotFoundError"):
        load_backend("no_such_package.kernels:Backend")


def test_backend_in_a_users_file(tmp_path):
    path = write_module(
        tmp_path,
        """
        import attnspec
        class Mine(attnspec.Backend):
            name = "mine"
            clauses = ("sdpa",)
            dtypes = ("float32",)
            def sdpa(self, q, k, v, **options):
                return q
    """,
    )
    backend = load_backend(f"{path}:Mine")
    assert backend.name == "mine" and backend.declared == {"sdpa"}


def test_missing_file_and_missing_object(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        load_backend(f"{tmp_path / 'absent.py'}:X")
    path = write_module(tmp_path, "x = 1\n")
    with pytest.raises(BackendError, match="has no attribute 'Mine'"):
        load_backend(f"{path}:Mine")


def test_file_that_fails_to_import_reports_its_error(tmp_path):
    path = write_module(tmp_path, "import torch_that_is_not_installed\n")
    with pytest.raises(BackendError, match="failed to import: ModuleNotFoundError"):
        load_backend(f"{path}:Mine")


def test_entry_point_backends_are_found(monkeypatch):
    ep = EntryPoint("vendor-kernel", "attnspec.backends.numpy_backend:NumpyBackend", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    assert "vendor-kernel" in registry.available()
    assert load_backend("vendor-kernel").name == "numpy"


class _Declared(Backend):
    name = "declared"
    dtypes = ("float32",)


@pytest.mark.parametrize(
    "attrs, message",
    [
        (dict(clauses=("sdpa.causl",)), "matches no clause"),
        (dict(clauses=("sdpa",)), "declares clause 'sdpa' but has no method 'sdpa'"),
        (dict(clauses=("sdpa",), dtypes=("float8",), sdpa=lambda self: None), "dtypes"),
        (dict(clauses=()), "declares no clause"),
        (dict(clauses=("sdpa",), name="", sdpa=lambda self: None), "'name' must be a non-empty string"),
    ],
)
def test_contract_violations_are_named(attrs, message):
    cls = type("Broken", (_Declared,), attrs)
    with pytest.raises(BackendError, match=message):
        registry.validate(cls())


def test_device_must_be_declared():
    with pytest.raises(BackendError, match=r"runs on \('cpu',\); device 'cuda' was asked for"):
        load_backend("numpy", device="cuda")


def test_variant_for_a_backend_without_variants():
    with pytest.raises(BackendError, match="takes no variant"):
        load_backend("numpy:fast")


def test_builtins_are_what_the_backend_modules_declare(tmp_path):
    """A backend registers itself: a literal BACKENDS dict in its own module, read without importing it."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "alpha.py").write_text(
        'import not_installed_anywhere\nBACKENDS = {"alpha": "Alpha", "alpha-2": "Two"}\n'
    )
    (tmp_path / "pkg" / "__init__.py").write_text('BACKENDS = {"beta": "make"}\n')
    (tmp_path / "helper.py").write_text("OTHER_BACKENDS = {}\n")
    assert registry.declared_builtins(tmp_path, "vendor") == {
        "alpha": "vendor.alpha:Alpha",
        "alpha-2": "vendor.alpha:Two",
        "beta": "vendor.pkg:make",
    }
    (tmp_path / "gamma.py").write_text('BACKENDS = {"beta": "Gamma"}\n')
    with pytest.raises(BackendError, match="'beta' is declared by vendor.gamma:Gamma and by vendor.pkg:make"):
        registry.declared_builtins(tmp_path, "vendor")


def test_every_builtin_resolves_to_its_module():
    for name, target in registry.BUILTINS.items():
        module, _, obj = target.partition(":")
        assert module.startswith("attnspec.backends.") and obj, name
    assert {"numpy", "mutant", "torch", "torch-sdpa", "flex", "triton", "cupy"} <= set(registry.BUILTINS)
