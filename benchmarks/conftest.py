"""pytest options and collection of the benchmark (``pytest benchmarks --backend=NAME``).

``--backend`` and ``--device`` are the conformance plugin's (loaded by the repository's
``conftest.py``); the backend is loaded once, as the suite loads it. Only ``bench_*.py`` here is
collected, and only when ``benchmarks`` is named on the command line: ``pytest tests conformance``
never sees it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # 'benchmarks' as a package, from any cwd

from attnspec.conformance import target, timing  # noqa: E402
from benchmarks.cases import MATRICES  # noqa: E402
from benchmarks.harness import Session  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("attnspec-bench", "attnspec benchmark")
    group.addoption(
        "--bench-matrix",
        choices=("auto", *MATRICES),
        default="auto",
        help="case matrix: 'gpu' (bf16, issues 4/12/13), 'smoke' (tiny, float32); auto: gpu on CUDA",
    )
    group.addoption(
        "--bench-log",
        metavar="FILE",
        type=Path,
        help="append each timed row to FILE as it ends (JSON lines): what a cut-off run keeps",
    )
    group.addoption(
        "--bench-rounds",
        type=int,
        default=None,
        help="timed rounds per row (default: about 100 ms of them, 10 to 1000)",
    )


def pytest_collect_file(file_path, parent):
    if file_path.name.startswith("bench_") and file_path.suffix == ".py":
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError("the benchmark runs on pytest-benchmark: pip install -e '.[bench]'")


def _spec_and_backend(config):
    if target.CURRENT is None:
        raise pytest.UsageError("the benchmark needs --backend=NAME (for example --backend=torch)")
    return target.CURRENT.spec, target.CURRENT.backend


def matrix(config) -> list:
    name = config.getoption("bench_matrix")
    if name == "auto":
        name = "gpu" if timing.is_cuda(_spec_and_backend(config)[1].device) else "smoke"
    return MATRICES[name]()


def pytest_generate_tests(metafunc):
    if {"case", "role"} <= set(metafunc.fixturenames):
        spec, _ = _spec_and_backend(metafunc.config)
        pairs = [(case, role) for case in matrix(metafunc.config) for role in case.roles(spec)]
        metafunc.parametrize("case, role", pairs, ids=[f"{case.id}-{role}" for case, role in pairs])


def pytest_collection_modifyitems(config, items):
    """pytest-benchmark times each round with the shared timer's clock (CUDA events on a GPU)."""
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            device = _spec_and_backend(config)[1].device
            case = item.callspec.params["case"]
            item.add_marker(pytest.mark.benchmark(timer=timing.clock(device), group=case.kind))


@pytest.fixture(scope="session")
def bench(request) -> Session:
    spec, backend = _spec_and_backend(request.config)
    options = request.config.getoption
    return Session(spec, backend, log=options("bench_log"), rounds=options("bench_rounds"))
