"""Helpers for the project's own tests: running the conformance suite in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The project's own tests run the Triton kernels on the CPU only (tests/test_triton_backend.py; the
# GPU run is scripts/gpu_conformance.py). Triton fixes its mode when first imported, and other tests
# import it first (torch.compile does), so the interpreter is chosen here, before any of them runs.
os.environ.setdefault("TRITON_INTERPRET", "1")


def run_suite(tmp_path: Path, *args: str, name: str = "run", profile: str = "ci") -> tuple[int, dict, str]:
    """``pytest conformance ARGS`` in a fresh interpreter: (exit code, JSON report, output)."""
    report = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "conformance",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--hypothesis-profile={profile}",
            f"--report={report}",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


def write_module(tmp_path: Path, body: str, name: str = "user_kernel") -> Path:
    """A user's module (a backend in a file of its own), dedented, written under ``tmp_path``."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def suite(tmp_path):
    return lambda *args, name="run": run_suite(tmp_path, *args, name=name)
