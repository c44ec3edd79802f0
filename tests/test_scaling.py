"""The scaling report runs end to end; its deterministic part (peak memory) shows the claimed exponents.

Timing exponents are printed and written, never asserted: they depend on the machine.
"""

from __future__ import annotations

import json

import pytest

from attnspec.clauses import CATALOG
from attnspec.conformance import scaling
from attnspec.conformance.scaling_cases import VARIANTS

#: one xdist worker runs this file (its module fixture is costly): ``--dist loadgroup``
pytestmark = pytest.mark.xdist_group("scaling")

LENGTHS = "256,512,1024"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaling") / "scaling.json"
    table = path.with_suffix(".md")
    assert scaling.main([f"--lengths={LENGTHS}", "--fit=3", "--repeat=1", f"--json={path}", f"--markdown={table}"]) == 0
    report = json.loads(path.read_text())
    report["markdown"] = table.read_text()
    return report


def test_every_variant_names_a_clause_and_an_operation():
    from attnspec import OPERATIONS

    for variant in VARIANTS:
        assert variant.clause in CATALOG, variant
        assert variant.op in OPERATIONS, variant


def test_report_covers_every_variant_on_numpy(report):
    assert sorted(r["variant"] for r in report["results"]) == sorted(v.name for v in VARIANTS)
    assert report["lengths"] == [256, 512, 1024] and report["date"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_peak_memory_grows_as_claimed(report, variant):
    """At most 0.35 above the claimed exponent (linear means at most linear: constant tiles make
    it less at small N); a quadratic variant also at least 0.35 below 2, so the fit can see N^2."""
    result = next(r for r in report["results"] if r["variant"] == variant.name)
    measured = result["memory_exponent"]
    assert measured is not None and measured < variant.expected_memory + 0.35, result
    if variant.expected_memory == 2:
        assert measured > 2 - 0.35, result


def test_markdown_has_a_row_per_result(report):
    rows = [line for line in report["markdown"].splitlines() if line.startswith("| numpy |")]
    assert len(rows) == len(report["results"]) == len(VARIANTS)


def test_exponent_fit():
    assert scaling.exponent([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    assert scaling.exponent([1, 2], [None, 1]) is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lengths=512,256"], "ascending"),
        (["--lengths=256,512", "--fit=3"], "--fit"),
        (["--repeat=0"], "--repeat"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        scaling.main(argv)
    assert message in capsys.readouterr().err
