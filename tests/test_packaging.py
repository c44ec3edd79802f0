"""The distribution installs one import namespace, ``attnspec``, and no global pytest plugin."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_wheel_holds_only_the_attnspec_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next(tmp_path.glob("attnspec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"attnspec", next(t for t in top if t.endswith(".dist-info"))}, top
    for module in (
        "attnspec/sdpa.py",
        "attnspec/reference/sdpa.py",
        "attnspec/backends/numpy_backend.py",
        "attnspec/backends/mutants/sdpa.py",
        "attnspec/backends/cupy/csrc/attention.cu",  # package data: the backend compiles it at run time
        "attnspec/backends/cupy/csrc/common.cuh",
        "attnspec/conformance/plugin.py",
        "attnspec/conformance/test_sdpa.py",
    ):
        assert module in names
    entry_points = next((n for n in names if n.endswith("entry_points.txt")), None)
    if entry_points:
        assert "pytest11" not in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_citation_file_names_the_current_versions():
    """CITATION.cff (GitHub's "Cite this repository") follows the package and spec versions."""
    import attnspec

    text = (ROOT / "CITATION.cff").read_text()
    assert f'version: "{attnspec.__version__}"' in text
    assert f"spec {attnspec.SPEC_VERSION}" in text
