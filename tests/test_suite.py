"""The conformance suite from a user's side: options, reports, declines and failure messages."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

import attnspec
from tests.conftest import ROOT, write_module


def test_users_file_backend_passes_what_it_declares(suite):
    code, report, output = suite(f"--backend={ROOT / 'examples' / 'my_backend.py'}:MyAttention")
    assert code == 0, output[-3000:]
    statuses = {c: r["status"] for c, r in report["clauses"].items()}
    assert {c for c, s in statuses.items() if s == "passed"} == {"sdpa", "sdpa.scale", "sdpa.causal.top_left"}
    assert {s for c, s in statuses.items() if c not in ("sdpa", "sdpa.scale", "sdpa.causal.top_left")} == {
        "unsupported"
    }
    assert report["backend"]["name"] == "my-attention" and report["dtypes"] == ["float32", "float64"]
    assert "numpy" in report["environment"] and report["spec_version"]


def test_no_backend_is_a_usage_error(suite):
    code, _, output = suite()
    assert code == 4 and "needs --backend=NAME" in output


def test_undeclared_dtype_is_a_usage_error(suite):
    code, _, output = suite("--backend=numpy", "--dtype=bfloat16")
    assert code == 4 and "declares dtypes ('float64', 'float32'); --dtype asked for ['bfloat16']" in output


def test_clause_selection_and_report(suite):
    code, report, output = suite("--backend=numpy", "--dtype=float32", "--clauses=sdpa.causal.*")
    assert code == 0, output[-2000:]
    ran = {c for c, r in report["clauses"].items() if r["tests"]}
    assert ran == {"sdpa.causal.top_left", "sdpa.causal.bottom_right"}
    assert all(r["status"] == "passed" for c, r in report["clauses"].items() if c in ran)


def test_declined_cases_are_reported_not_failed(suite, tmp_path):
    kernel = write_module(
        tmp_path,
        """
        import attnspec
        from attnspec.reference import sdpa
        class Kernel(attnspec.Backend):
            name = "picky"
            clauses = ("sdpa", "sdpa.softcap")
            dtypes = ("float64",)
            def sdpa(self, q, k, v, softcap=None, **options):
                if softcap is not None:
                    raise attnspec.Unsupported("no softcap kernel")
                if q.shape[-1] > 16:
                    raise attnspec.Unsupported("head dims above 16")
                return sdpa(q, k, v, **options)
    """,
    )
    code, report, output = suite(f"--backend={kernel}:Kernel", "--clauses=sdpa,sdpa.softcap")
    assert code == 0, output[-3000:]
    assert report["clauses"]["sdpa.softcap"]["status"] == "declined"
    assert any("no softcap kernel" in s for s in report["clauses"]["sdpa.softcap"]["skips"])
    assert report["clauses"]["sdpa"]["status"] == "passed"


NAN_AT_64 = """
    import attnspec, numpy as np
    from attnspec.reference import sdpa
    class Kernel(attnspec.Backend):
        name = "nan-at-64"
        clauses = ("sdpa",)
        dtypes = ("float32",)
        def sdpa(self, q, k, v, **options):
            out = sdpa(q, k, v, **options).astype(q.dtype)
            if k.shape[2] > 64:
                out[..., -1, :] = np.nan  # a bug on the partial tile
            return out
"""


def test_a_wrong_kernel_gets_a_message_that_locates_the_bug(suite, tmp_path):
    spec = f"--backend={write_module(tmp_path, NAN_AT_64)}:Kernel"
    code, report, output = suite(spec, "--clauses=sdpa", "--tb=short")
    assert code == 1
    message = report["clauses"]["sdpa"]["failures"][0]["message"]
    for expected in (
        "[sdpa] backend 'nan-at-64' (float32, cpu)",
        "non-finite where the reference is not",
        "case: SdpaCase(",
        f"reproduce: pytest '{ROOT}/conformance/test_",
    ):
        assert expected in message, message
    assert "@reproduce_failure" in output or "Falsifying" in output


def test_the_reproduce_line_works_from_any_directory(suite, tmp_path):
    """The command a failure prints fails the same way when run elsewhere (absolute node and backend file)."""
    spec = f"--backend={os.path.relpath(write_module(tmp_path, NAN_AT_64), ROOT)}:Kernel"  # relative to the run's cwd
    _, report, _ = suite(spec, "--clauses=sdpa")
    message = report["clauses"]["sdpa"]["failures"][0]["message"]
    command = next(line for line in message.splitlines() if "reproduce: " in line).split("reproduce: ", 1)[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = [sys.executable, "-m", *shlex.split(command), "-p", "no:cacheprovider", "-q"]
    proc = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "[sdpa] backend 'nan-at-64'" in proc.stdout, proc.stdout[-3000:] + proc.stderr


def test_a_correct_flash_style_kernel_passes_at_16_and_32_bits(suite):
    """The tolerance policy admits a real tiled kernel (P rounded before P @ V, float32 online softmax)."""
    code, report, output = suite(f"--backend={ROOT / 'tests' / 'fa_like_backend.py'}:FlashLike")
    assert code == 0, output[-4000:]
    assert {r["status"] for c, r in report["clauses"].items() if c.startswith("sdpa")} == {"passed"}
    assert report["dtypes"] == ["bfloat16", "float16", "float32"]


def test_results_are_collected_under_xdist(suite):
    pytest.importorskip("xdist")
    code, report, output = suite("--backend=numpy", "--clauses=sdpa.window", "-n", "2", "-p", "xdist", name="xdist")
    assert code == 0, output[-2000:]
    _, serial, _ = suite("--backend=numpy", "--clauses=sdpa.window", name="serial")
    assert report["clauses"]["sdpa.window"]["status"] == "passed"
    assert report["clauses"]["sdpa.window"]["passed"] == serial["clauses"]["sdpa.window"]["passed"] > 0


def test_torch_sdpa_adapter_runs_on_the_cpu(suite):
    """The adapter stays runnable where CI is (the GPU report covers its kernels)."""
    pytest.importorskip("torch")
    code, report, output = suite(
        "--backend=torch-sdpa:math",
        "--device=cpu",
        "--dtype=float32",
        "--clauses=sdpa,sdpa.scale,sdpa.gqa,sdpa.causal.*",
    )
    assert code == 0, output[-3000:]
    assert report["clauses"]["sdpa.causal.bottom_right"]["status"] == "passed"


def test_shape_menu_is_recorded_in_the_report_and_the_reproducer(suite, tmp_path):
    code, report, output = suite(
        f"--backend={write_module(tmp_path, NAN_AT_64)}:Kernel", "--clauses=sdpa", "--shapes=menu"
    )
    assert code == 1 and report["environment"]["shapes"] == "menu"
    assert "--hypothesis-profile=ci --shapes=menu" in report["clauses"]["sdpa"]["failures"][0]["message"]


def test_markdown_report_has_the_clause_table_and_the_failures(suite, tmp_path):
    md = tmp_path / "summary.md"
    code, report, output = suite("--backend=mutant:scale_ignored", "--clauses=sdpa.scale", f"--report-md={md}")
    assert code == 1, output[-2000:]
    text = md.read_text()
    assert text.startswith("# attnspec conformance: `mutant:scale_ignored`")
    assert "| `sdpa.scale` | failed |" in text
    assert "## Failures" in text and "### `sdpa.scale`" in text
    first = report["clauses"]["sdpa.scale"]["failures"][0]["message"].strip().splitlines()[0]
    assert first in text  # the assertion's own message, as the JSON report holds it


def test_unwritable_markdown_report_is_refused_before_the_run(suite, tmp_path):
    code, _, output = suite("--backend=numpy", f"--report-md={tmp_path / 'missing' / 'x.md'}")
    assert code == 4 and "--report-md=" in output and "does not exist" in output


ZERO_TIMES_NAN = """
    import attnspec, numpy as np
    from attnspec.reference.sdpa import prepare, scores, softmax_average, visible
    class Kernel(attnspec.Backend):
        name = "zero-times-nan"
        clauses = ("sdpa", "sdpa.window")
        dtypes = ("float64",)
        def sdpa(self, q, k, v, return_lse=False, **options):
            p = prepare(q, k, v, **options)
            rows, cols = range(p.n_q), range(p.n_k)
            vis = visible(p, rows, cols)
            weights, lse = softmax_average(scores(p, rows, cols), vis, np.eye(p.n_k)[None, None])
            out = np.einsum("bhqk,bhkd->bhqd", weights, v)  # a zero weight times NaN is NaN, as on tensor cores
            return (out, lse) if return_lse else out
"""


def test_should_rules_are_reported_apart_from_the_clause_status(suite, tmp_path, monkeypatch):
    kernel = write_module(tmp_path, ZERO_TIMES_NAN)
    md = tmp_path / "summary.md"
    code, report, output = suite(f"--backend={kernel}:Kernel", "--clauses=sdpa.window", f"--report-md={md}")
    assert code == 0, output[-3000:]  # a SHOULD not met does not fail the run
    row = report["clauses"]["sdpa.window"]
    assert row["status"] == "passed" and row["failed"] == 0, row
    assert row["should_failed"] >= 1 and "SHOULD not met" in row["should_failures"][0]["message"]
    assert "## SHOULD rules not met" in md.read_text()


def test_the_json_report_is_written_while_the_suite_runs(tmp_path, monkeypatch):
    """A run killed before pytest ends keeps the results of the tests that finished: the plugin
    rewrites the JSON (marked partial) as results arrive, whole or not at all."""
    from attnspec.conformance import plugin, target

    class Config:
        stash = {plugin.PROFILE: "dev"}

        @staticmethod
        def getoption(name):
            return str(tmp_path / "r.json") if name == "report" else None

    class Report:
        nodeid, when, outcome, longrepr, passed, failed, skipped = "t::a", "call", "passed", None, True, False, False
        user_properties = [("attnspec_clauses", ["sdpa"]), ("attnspec_declines", [])]

    backend = attnspec.load_backend("numpy")
    monkeypatch.setattr(target, "CURRENT", target.Target(backend, "numpy", ("float64",), shapes="all"))
    monkeypatch.setattr(plugin, "PARTIAL_EVERY", 0.0)
    collector = plugin._Collector({}, Config())
    collector.pytest_runtest_logreport(Report())
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["partial"] is True and list(written["tests"]) == ["t::a"]
    assert not (tmp_path / "r.json.partial").exists()
