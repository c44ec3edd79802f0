"""The benchmark harness on the CPU: the shared timer, a run of the tiny matrix through pytest-benchmark
and the driver (schema, ratios), resuming a cut-off run, verdicts and rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from attnspec.conformance import timing
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks import summary  # noqa: E402
from benchmarks.cases import Case, key_ranges, smoke_matrix, visible_pairs  # noqa: E402
from benchmarks.harness import add_rates  # noqa: E402
from scripts.gpu_bench import pytest_env  # noqa: E402

#: one xdist worker runs this file (its module fixture is costly): ``--dist loadgroup``
pytestmark = pytest.mark.xdist_group("bench_harness")

pytest.importorskip("pytest_benchmark")  # the 'test' extra installs it: this guards a bare checkout only


def _driver(out, *args):
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_bench.py", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    _driver(out, "--backend=numpy", "--matrix=smoke", "--rounds=3")
    return out, json.loads((out / "bench.json").read_text())


def test_median_not_mean_and_first_call_apart():
    fake = SimpleNamespace(
        stats=SimpleNamespace(stats=SimpleNamespace(data=[0.001, 0.002, 0.100])), pedantic=lambda target, **kw: target()
    )
    calls = []
    m = timing.measure(lambda: calls.append(1), "cpu", runner=fake)
    assert m["ms"] == pytest.approx(2.0) and m["rounds"] == 3
    assert len(calls) == 3 and m["first_call_ms"] >= 0 and m["peak_bytes"] is None  # first, second, one pedantic


def test_rounds_follow_the_estimate_within_bounds():
    assert timing.rounds_for(1000.0) == (timing.MIN_ROUNDS, 1)
    assert timing.rounds_for(1e-6)[0] == timing.MAX_ROUNDS
    rounds = timing.Rounds("cpu")
    rounds.pedantic(lambda: None, rounds=4, warmup_rounds=2)
    assert len(rounds.seconds) == 4


def test_visibility_counts():
    assert visible_pairs(4, 4) == 16 and visible_pairs(4, 4, causal=True) == 10
    assert visible_pairs(4, 4, causal=True, window=2) == 7
    lo, hi = key_ranges(2, 5, True, None)  # bottom-right: the last query sees every key
    assert list(hi) == [3, 4] and list(lo) == [0, 0]


def test_ratio_and_rates():
    case = Case("decode", 256, 16, b=1, h=4, h_kv=2, dtype="float32")
    record = {"role": "backend", "ms": 2.0}
    add_rates(case, record, copy_rate_gbps=1.0, baseline_ms=1.0)
    assert record["ratio_vs_sdpa"] == 0.5
    assert record["GBps"] == pytest.approx(2 * 2 * 256 * 16 * 4 / 2.0 / 1e6) and record["frac_copy"] == record["GBps"]
    forward = {"role": "backend", "ms": 1.0}
    add_rates(Case("forward", 4, 2, b=1, h=1, causal=True, dtype="float32"), forward, None, None)
    assert forward["tflops"] == pytest.approx(4 * 2 * 10 / 1e9) and forward["ratio_vs_sdpa"] is None


def test_every_row_is_recorded_with_its_schema(run):
    out, doc = run
    cases = [c for c in smoke_matrix() if c.roles("numpy")]
    assert {(r["case"], r["role"]) for r in doc["records"]} == {
        (c.id, role) for c in cases for role in c.roles("numpy")
    }
    for r in doc["records"]:
        assert {
            "session",
            "case",
            "kind",
            "n",
            "d",
            "role",
            "backend",
            "ms",
            "rounds",
            "first_call_ms",
            "timer",
        } <= set(r), r
        assert r["rounds"] == 3 and r["ms"] > 0
        assert ("GBps" in r) == (r["kind"] == "decode") and ("tflops" in r) == (r["kind"] != "decode")
    env = doc["sessions"][0]["environment"]
    assert {"date", "device", "torch", "triton", "cuda", "driver", "timer", "copy_rate_GBps"} <= set(env)
    assert doc["targets"] == summary.read_targets()
    pb = json.loads(next((out / "bench-parts").glob("numpy-*.json")).read_text())  # --benchmark-json
    assert len(pb["benchmarks"]) == len(doc["records"])
    entry = pb["benchmarks"][0]
    assert entry["extra_info"]["ms"] == pytest.approx(entry["stats"]["median"] * 1e3)


def test_ratios_divide_by_the_same_sessions_baseline(run):
    _, doc = run
    base = {r["case"]: r["ms"] for r in doc["records"] if r["role"] == "sdpa-default"}
    for r in doc["records"]:
        assert r["ratio_vs_sdpa"] == pytest.approx(base[r["case"]] / r["ms"])


def test_a_cut_off_run_resumes_where_it_stopped(run, tmp_path):
    out, doc = run
    lines = (out / "bench-parts" / "numpy.jsonl").read_text().splitlines()
    (tmp_path / "bench-parts").mkdir()
    (tmp_path / "bench-parts" / "numpy.jsonl").write_text("\n".join(lines[:6]) + "\n")  # session + 2.5 cases
    kept = {json.loads(line)["case"] for line in lines[1:5]}
    printed = _driver(tmp_path, "--backend=numpy", "--matrix=smoke", "--rounds=3")
    assert "(4 rows already done)" in printed
    resumed = json.loads((tmp_path / "bench.json").read_text())
    first = json.loads(lines[0])["session"]
    assert {(r["case"], r["role"]) for r in resumed["records"]} == {(r["case"], r["role"]) for r in doc["records"]}
    assert {r["case"] for r in resumed["records"] if r["session"] == first} == kept  # the half case was redone
    assert "every row already done" in _driver(tmp_path, "--backend=numpy", "--matrix=smoke")


def test_render_rederives_the_same_table(run):
    out, _ = run
    table = (out / "bench.md").read_text()
    _driver(out / "bench.json", "--render")
    assert (out / "bench.md").read_text() == table
    assert "## forward" in table and "## decode" in table and "bench-ratio-vs-n.png" in table
    assert (out / "bench-ratio-vs-n.png").stat().st_size > 0 and (out / "bench-scaling.png").stat().st_size > 0


def _doc(rows, targets):
    session = {"session": "s", "spec": "k:v", "backend": "k", "environment": timing.environment("cpu")}
    return {
        "sessions": [session],
        "targets": {"k": targets},
        "records": [
            dict(
                {
                    "session": "s",
                    "role": "backend",
                    "kind": "forward",
                    "d": 64,
                    "b": 1,
                    "h": 1,
                    "causal": False,
                    "window": None,
                    "splits": 1,
                    "lens": "device",
                    "dtype": "bf16",
                },
                **r,
            )
            for r in rows
        ],
    }


def test_verdicts_each_row_best_of_and_comparator():
    rows = [
        {"case": "a", "n": 2048, "ratio_vs_sdpa": 0.95},
        {"case": "b", "n": 4096, "ratio_vs_sdpa": 0.5},
        {"case": "c", "n": 512, "ratio_vs_sdpa": 0.1},
    ]
    v = summary.judge(_doc(rows, [{"what": "w", "kind": "forward", "n": [2048, 16384], "metric": "ratio", "min": 0.9}]))
    assert [(x["where"], x["met"]) for x in v] == [("a", True), ("b", False)]  # c is outside the range
    v = summary.judge(_doc(rows, [{"what": "w", "metric": "ratio", "min": 0.9, "best_over": ["n"]}]))
    assert [(x["where"], x["met"]) for x in v] == [("a", True)]
    doc = _doc(rows[:1], [{"what": "w", "metric": "ratio", "min_of": "flex"}])
    doc["records"].append(dict(doc["records"][0], role="flex", ratio_vs_sdpa=2.0))
    assert summary.judge(doc)[0]["met"] is False and summary.judge(doc)[0]["bound"] == 2.0


def test_memory_exponent_verdict():
    rows = [{"case": str(n), "n": n, "b": 16384 // n, "peak_bytes": 64 * 16384 // n * n} for n in (2048, 4096, 8192)]
    v = summary.judge(_doc(rows, [{"what": "m", "metric": "memory_exponent", "max": 1.1}]))
    assert v[0]["value"] == pytest.approx(1.0) and v[0]["met"] is True
    assert "not met" not in summary.markdown(_doc(rows, {}), v)


def test_torch_backend_and_the_floor(tmp_path):
    """The backend under test by its registry name; the floor rows are the torch backend's only."""
    pytest.importorskip("torch")
    log = tmp_path / "log.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "--backend=torch",
            "--bench-matrix=smoke",
            "--bench-rounds=2",
            f"--bench-log={log}",
            "-k",
            "floor or forward-D16-N64-B4-H2-causal",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=pytest_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    records = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    assert [(r["kind"], r["role"]) for r in records] == [
        ("forward", "sdpa-default"),
        ("forward", "backend"),
        ("floor", "sdpa-default"),
        ("floor", "floor"),
    ]
    assert records[1]["backend"].startswith("torch") and records[1]["peak_bytes"] > 0
    assert all(r["ms"] > 0 and r["ratio_vs_sdpa"] > 0 for r in records)


def test_a_misspelt_target_is_refused(tmp_path):
    bad = tmp_path / "targets.toml"
    bad.write_text('[[x]]\nwhat = "w"\nmetric = "ratio"\nmin = 1\nlense = "device"\n')
    with pytest.raises(ValueError, match="lense"):
        summary.read_targets(bad)
    assert summary.read_targets()["triton"]  # the committed file passes
