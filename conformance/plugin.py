"""The pytest plugin of the conformance suite.

Loaded by the repository's ``conftest.py`` (or ``-p attnspec.conformance.plugin``); it is never
registered globally, so its options never reach other projects' pytest runs. It adds
``--backend``, ``--device``, ``--dtype``, ``--clauses``, ``--tolerance-class``, ``--report`` and
``--report-md``, skips the tests of clauses the backend does not declare, and ends with a summary
per clause.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FailedHealthCheck, Unsatisfiable

from attnspec import CATALOG
from attnspec.conformance import report as _report
from attnspec.conformance import target
from attnspec.conformance.assertions import Checker
from attnspec.conformance.quantised import Measured
from attnspec.contract import BackendError
from attnspec.registry import load_backend
from attnspec.tolerance import QUANTISED_CLASSES, QuantisedClass

# Function-scoped fixtures here ('check') carry no per-example state, so Hypothesis may reuse them.
_COMMON: dict[str, Any] = dict(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None, print_blob=True
)
try:  # extend Hypothesis's own CI profile (derandomised, no database) where it has one
    _CI_BASE = settings.get_profile("ci")
except Exception:
    _CI_BASE = settings(derandomize=True, database=None)
settings.register_profile("ci", _CI_BASE, max_examples=50, **_COMMON)
# For the project's mutant tests: as "ci", without shrinking (only the failure matters there).
settings.register_profile(
    "mutants", _CI_BASE, max_examples=50, phases=[Phase.explicit, Phase.reuse, Phase.generate], **_COMMON
)
settings.register_profile("dev", max_examples=12, **_COMMON)
settings.register_profile("nightly", max_examples=400, **_COMMON)
# For backends that compile per shape (FlexAttention): derandomised, few examples, pinned ones kept.
settings.register_profile("quick", _CI_BASE, max_examples=4, **_COMMON)

#: The profiles above, named in the error for an unknown ``--hypothesis-profile``.
PROFILES = ("ci", "dev", "quick", "nightly", "mutants")

#: The run's per-test results (node ID -> outcome), filled in the main process.
RESULTS = pytest.StashKey[dict]()
#: The Hypothesis profile the run uses, by the name that reproduces it (``--hypothesis-profile=NAME``).
PROFILE = pytest.StashKey[str]()
#: A test's comparisons under the run's quantised tolerance class (the check fixture's, one per test).
MEASURED = pytest.StashKey[Measured]()


def pytest_addoption(parser):
    group = parser.getgroup("attnspec", "attnspec conformance")
    group.addoption(
        "--backend",
        help="backend to check: a built-in name (numpy), an installed plugin, "
        "'package.module:object' or 'path/to/file.py:object'",
    )
    group.addoption("--device", help="device for the backend (default: the first it declares)")
    group.addoption(
        "--dtype",
        action="append",
        default=[],
        help="dtype(s) to check, repeatable or comma-separated (default: all the backend declares)",
    )
    group.addoption(
        "--clauses", default="", help="only tests of these clauses, comma-separated globs (e.g. 'sdpa.causal.*')"
    )
    group.addoption("--report", metavar="FILE", help="write the per-clause results as JSON to FILE")
    group.addoption(
        "--report-md",
        metavar="FILE",
        help="write the per-clause table and the failures in Markdown to FILE (a pull request, a CI job summary)",
    )
    group.addoption(
        "--tolerance-class",
        choices=(*QUANTISED_CLASSES, "none"),
        default=None,
        help="also judge numerical comparisons by this quantised tolerance class (attnspec.tolerance."
        "quantised_tolerance), reported in its own column beside the 16-bit verdict, which stays the "
        "status; default: the class the backend declares (tolerance_class), if any; 'none': no class",
    )
    group.addoption(
        "--shapes",
        choices=("all", "menu", "gpu"),
        default=None,
        help="'menu': draw sizes from a short fixed menu, for backends that compile once per shape "
        "(pinned examples keep their shapes); 'gpu': sdpa cases also past a GPU kernel's tiles "
        "(lengths 255..4000, head dim 256) and the pinned 16k-token cases; default 'gpu' on a "
        "CUDA device, else 'all'",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Options are checked before any work (Hypothesis's plugin loads the profile after this hook)."""
    config.addinivalue_line("markers", "clause(*ids): spec clauses a conformance test checks; the first is its own")
    profile = config.getoption("hypothesis_profile", None)
    if profile:
        _check_profile(profile)
    if not hasattr(config, "workerinput"):
        _check_report_path("--report", config.getoption("report"))
        _check_report_path("--report-md", config.getoption("report_md"))
    if not profile:
        profile = "ci" if os.environ.get("CI") else "dev"
        settings.load_profile(profile)
    config.stash[PROFILE] = profile
    config.stash[RESULTS] = {}
    config.pluginmanager.register(_Collector(config.stash[RESULTS], config), "attnspec-results")
    if config.getoption("backend"):
        _target(config)  # a backend that cannot load is a usage error before any collection


def _check_profile(name: str) -> None:
    try:
        settings.get_profile(name)
    except Exception:
        raise pytest.UsageError(
            f"attnspec: --hypothesis-profile={name!r} is not a registered profile; the suite's are "
            f"{', '.join(PROFILES)} (ci: 50 examples a test, derandomised; dev: 12; quick: 4; nightly: 400)"
        ) from None


def _check_report_path(option: str, path: str | None) -> None:
    """A report that cannot be written is refused before the run, not after it."""
    if not path:
        return
    where = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise pytest.UsageError(f"attnspec: {option}={path!r} is a directory; give a file path")
    if not os.path.isdir(where):
        raise pytest.UsageError(f"attnspec: {option}={path!r}: the directory {where!r} does not exist")
    if not os.access(where, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise pytest.UsageError(f"attnspec: {option}={path!r} cannot be written (no write permission)")


def _target(config) -> target.Target:
    if target.CURRENT is None:
        spec = config.getoption("backend")
        if not spec:
            raise pytest.UsageError("the conformance suite needs --backend=NAME (for example --backend=numpy)")
        try:
            backend = load_backend(spec, device=config.getoption("device"))
        except BackendError as exc:
            raise pytest.UsageError(f"attnspec: {exc}") from None
        shapes = config.getoption("shapes") or ("gpu" if str(backend.device).startswith("cuda") else "all")
        target.CURRENT = target.Target(
            backend, spec, _dtypes(config, backend), shapes=shapes, tolerance_class=_tolerance_class(config, backend)
        )
    return target.CURRENT


def _tolerance_class(config, backend) -> QuantisedClass | None:
    """``--tolerance-class`` if given, else the class the backend declares; never one by default."""
    name = config.getoption("tolerance_class") or getattr(backend, "tolerance_class", None)
    if name in (None, "none"):
        return None
    if name not in QUANTISED_CLASSES:
        raise pytest.UsageError(
            f"attnspec: backend {backend.name!r} declares tolerance_class {name!r}; the classes are "
            f"{', '.join(QUANTISED_CLASSES)}"
        )
    return QUANTISED_CLASSES[name]


def _dtypes(config, backend) -> tuple[str, ...]:
    asked = [d.strip() for opt in config.getoption("dtype") for d in opt.split(",") if d.strip()]
    wrong = [d for d in asked if d not in backend.dtypes]
    if wrong:
        raise pytest.UsageError(
            f"attnspec: backend {backend.name!r} declares dtypes {backend.dtypes}; --dtype asked for {wrong}"
        )
    return tuple(asked) or tuple(backend.dtypes)


def pytest_report_header(config):
    if config.getoption("backend"):
        t = _target(config)
        return (
            f"attnspec: backend {t.backend.name!r} ({t.spec}) on {t.backend.device}; "
            f"dtypes {', '.join(t.dtypes)}; hypothesis profile {config.stash[PROFILE]}"
            + (f"; shapes: {t.shapes}" if t.shapes != "all" else "")
            + (f"; also the {t.tolerance_class.name} tolerance class" if t.tolerance_class else "")
        )
    return None


def pytest_generate_tests(metafunc):
    if "dtype" in metafunc.fixturenames and metafunc.definition.get_closest_marker("clause"):
        dtypes = target.CURRENT.dtypes if target.CURRENT else ("no-backend",)  # refused after collection
        metafunc.parametrize("dtype", dtypes)


def pytest_collection_modifyitems(config, items):
    if target.CURRENT is None and any(clause_ids(item) for item in items):
        raise pytest.UsageError("the conformance suite needs --backend=NAME (for example --backend=numpy)")
    patterns = [p.strip() for p in config.getoption("clauses").split(",") if p.strip()]
    for pattern in patterns:
        if not fnmatch.filter(CATALOG, pattern):
            raise pytest.UsageError(
                f"--clauses: {pattern!r} matches no clause (clause IDs are listed by "
                "'python -m attnspec'; use a glob such as 'sdpa.causal.*')"
            )
    selected, deselected = [], []
    for item in items:
        ids = clause_ids(item)
        if not ids:
            selected.append(item)
            continue
        unknown = [c for c in ids if c not in CATALOG]
        if unknown:
            raise pytest.UsageError(f"{item.nodeid} names unknown clause(s) {unknown}")
        if patterns and not any(fnmatch.fnmatchcase(ids[0], p) for p in patterns):
            deselected.append(item)
            continue
        selected.append(item)
        missing = [c for c in ids if c not in _target(config).backend.declared]
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"unsupported: backend does not declare {', '.join(missing)}"))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def clause_ids(item) -> tuple[str, ...]:
    marker = item.get_closest_marker("clause")
    return tuple(marker.args) if marker else ()


@pytest.fixture(scope="session")
def backend(request):
    return _target(request.config).backend


@pytest.fixture
def check(request, dtype) -> Checker:
    t = _target(request.config)
    node = f"{request.config.rootpath}/{request.node.nodeid}"  # absolute: the command works from any directory
    command = (
        f"pytest '{node}' --backend={_absolute_spec(t.spec)} --device={t.backend.device} --dtype={dtype} "
        f"--hypothesis-profile={request.config.stash[PROFILE]}" + (f" --shapes={t.shapes}" if t.shapes != "all" else "")
    )
    measured = request.node.stash.setdefault(MEASURED, Measured()) if t.tolerance_class else None
    return Checker(
        clause=clause_ids(request.node)[0],
        backend=t.backend.name,
        device=t.backend.device,
        dtype=dtype,
        reproduce=command + (f" --tolerance-class={t.tolerance_class.name}" if t.tolerance_class else ""),
        tolerance_class=t.tolerance_class,
        measured=measured,
    )


def _absolute_spec(spec: str) -> str:
    """A ``path/to/file.py:Object`` backend with its path made absolute (names and modules unchanged)."""
    path, sep, obj = spec.partition(".py:")
    return f"{os.path.abspath(path + '.py')}:{obj}" if sep and not os.path.isabs(path) else spec


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if target.CURRENT is not None:
        target.CURRENT.test_id = item.nodeid
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Runs where the test runs (an xdist worker too): tag the report with its clauses and declines."""
    outcome = yield
    rep = outcome.get_result()
    ids = clause_ids(item)
    if not ids:
        return
    declines = target.CURRENT.declines.get(item.nodeid) if target.CURRENT else None
    if (
        rep.when == "call"
        and rep.failed
        and declines
        and call.excinfo.errisinstance((Unsatisfiable, FailedHealthCheck))
    ):
        rep.outcome = "skipped"  # the backend refused every case Hypothesis drew: unsupported, not wrong
        rep.longrepr = (str(item.path), item.location[1], f"declined by the backend: {declines[0]}")
    rep.user_properties.append(("attnspec_clauses", list(ids)))
    rep.user_properties.append(("attnspec_declines", list(declines or [])))
    cls = target.CURRENT.tolerance_class if target.CURRENT else None
    if cls is not None:  # every test of a run under a class carries its comparisons, none made or not
        rep.user_properties.append(("attnspec_quantised", item.stash.get(MEASURED, Measured()).summary(cls)))


#: Seconds between the partial JSON reports written while the suite runs (``--report``).
PARTIAL_EVERY = 15.0


class _Collector:
    """Collects the per-clause results where the reports arrive: the main process (xdist sends
    them there). A plugin object, since ``pytest_runtest_logreport`` is not given the config.

    With ``--report``, the JSON is also written every :data:`PARTIAL_EVERY` seconds, marked
    ``"partial": true``: a run killed before pytest ends (a device call's time limit, xdist workers
    that do not stop on Ctrl-C) leaves the results of every test that finished.
    """

    def __init__(self, results: dict, config):
        self.results, self.config = results, config
        self.last_write = time.monotonic()

    def pytest_runtest_logreport(self, report):
        props = dict(report.user_properties)
        if "attnspec_clauses" not in props:
            return
        if report.when == "call" or report.outcome != "passed":
            self.results[report.nodeid] = _report.outcome(
                tuple(props["attnspec_clauses"]), report, props["attnspec_declines"], props.get("attnspec_quantised")
            )
            self._write_partial()

    def _write_partial(self) -> None:
        path = self.config.getoption("report")
        if not path or target.CURRENT is None or time.monotonic() - self.last_write < PARTIAL_EVERY:
            return
        self.last_write = time.monotonic()
        document = _report.document(target.CURRENT, self.results, hypothesis_profile=self.config.stash[PROFILE])
        with contextlib.suppress(OSError):  # the final write reports what is wrong with the path
            _report.write_json(path, {**document, "partial": True})


def _fail_at_16_bits(session) -> None:
    """Under a quantised class pytest sees the class's verdicts; a test that passed only under it
    failed at 16 bits (report.both_verdicts), and so does the run: its exit status is never 0."""
    results = session.config.stash.get(RESULTS, {})
    if session.exitstatus == pytest.ExitCode.OK and any(
        r["outcome"] == "failed" and r.get("quantised", {}).get("outcome") == "passed" for r in results.values()
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


#: Why the report could not be written at the end (printed after the per-clause table).
REPORT_ERROR = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, config):
    if target.CURRENT is not None and config.stash[RESULTS]:
        _report.print_summary(terminalreporter, target.CURRENT, config.stash[RESULTS])
    if REPORT_ERROR in config.stash:
        terminalreporter.write_line(config.stash[REPORT_ERROR], red=True, bold=True)


def pytest_sessionfinish(session):
    config = session.config
    _fail_at_16_bits(session)
    paths = {"json": config.getoption("report"), "md": config.getoption("report_md")}
    if not any(paths.values()) or target.CURRENT is None or hasattr(config, "workerinput"):
        return
    report = _report.document(target.CURRENT, config.stash[RESULTS], hypothesis_profile=config.stash[PROFILE])
    for kind, path in paths.items():
        if not path:
            continue
        try:
            if kind == "json":
                _report.write_json(path, report)
            else:
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(_report.markdown(report))
        except OSError as exc:  # the results above are still printed; the run then fails
            config.stash[REPORT_ERROR] = f"attnspec: the report could not be written to {path!r}: {exc}"
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
