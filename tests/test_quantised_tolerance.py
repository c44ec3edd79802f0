"""The ``int8`` tolerance class (``attnspec.tolerance.quantised_tolerance``) has teeth and stays apart.

(a) SageAttention's arithmetic, emulated in NumPy (``tests/quantised_backend.py``), fails the 16-bit
bound and passes the class; (b) a scale dropped, the row maximum not subtracted, or one scale per
tensor fail the class too; (c) a 16-bit backend's report is what it was, and a run under the class
reports both verdicts, the 16-bit one as the status.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from attnspec import reference
from attnspec.conformance.assertions import Checker, ConformanceError
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.plugin import _tolerance_class
from attnspec.conformance.quantised import Measured
from attnspec.conformance.report import markdown
from attnspec.conformance.tolerance import sdpa_bounds
from attnspec.tolerance import QUANTISED_CLASSES
from tests.conftest import ROOT, run_suite
from tests.quantised_backend import DropsScales, Int8Emulated, NoMaxSubtraction, PerTensorScales

INT8 = QUANTISED_CLASSES["int8"]
EMULATED = f"--backend={ROOT / 'tests' / 'quantised_backend.py'}:Int8Emulated"
#: (case, dtype): in float16 int8's error is a few times the 16-bit bound, in float32 a thousand
#: (in bfloat16 it is often within it: bfloat16's own rounding is coarser than these int8 steps).
CASES = [
    (SdpaCase(n_q=64, n_k=64, d_qk=64, d_v=64, seed=1), "float16"),
    (SdpaCase(n_q=200, n_k=200, d_qk=128, d_v=128, seed=3), "float16"),  # two query blocks, four key blocks
    (SdpaCase(h_q=4, h_kv=2, n_q=130, n_k=130, d_qk=64, d_v=64, causal="top_left", seed=3), "float16"),
    (SdpaCase(n_q=3, n_k=70, d_qk=96, d_v=96, scale=0.3, seed=4), "float16"),
    (SdpaCase(n_q=200, n_k=200, d_qk=64, d_v=64, causal="bottom_right", seed=2), "float32"),
]


def _check(backend, q, k, v, options, dtype="float16"):
    """The backend's output against the reference under the class: (error, 16-bit bound, class bound)."""
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True, **options)
    bound, _ = sdpa_bounds(q, k, v, options, dtype, ref_out, ref_lse)
    with np.errstate(all="ignore"):
        out = np.asarray(backend.sdpa(q, k, v, **options), np.float64)
    measured = Measured()
    checker = Checker("sdpa", backend.name, "cpu", dtype, "-", tolerance_class=INT8, measured=measured)
    try:
        checker.close(out, ref_out, bound, what="out", case=None)
        passed = True
    except ConformanceError:
        passed = False
    return passed, measured


@pytest.mark.parametrize("case, dtype", CASES, ids=lambda c: f"N{c.n_k}-D{c.d_qk}" if isinstance(c, SdpaCase) else c)
def test_emulated_int8_arithmetic_passes_the_class_and_not_16_bits(case, dtype):
    passed, measured = _check(Int8Emulated(), *case.inputs(dtype), dtype=dtype)
    assert passed and measured.worst["ratio"] < 1
    assert measured.over16 and measured.worst16["ratio16"] > 1  # ... and its 16-bit verdict is a fail


def _outlier_head(seed: int = 5):
    """Head 1's keys 100x larger and queries 100x smaller than head 0's: the same scores, but one
    scale per tensor makes head 0's key steps (and head 1's query steps) 100x coarser."""
    q, k, v, options = SdpaCase(h_q=2, h_kv=2, n_q=96, n_k=96, d_qk=64, d_v=64, seed=seed).inputs("float16")
    k[:, 1] *= 100
    q[:, 1] /= 100
    return q, k, v, options


@pytest.mark.parametrize(
    "mutant, inputs",
    [
        (DropsScales(), SdpaCase(n_q=64, n_k=64, d_qk=64, d_v=64).inputs("float16")),
        (NoMaxSubtraction(), SdpaCase(n_q=8, n_k=64, d_qk=64, d_v=64, magnitude="large").inputs("float16")),
        (PerTensorScales(), _outlier_head()),
    ],
    ids=lambda x: getattr(x, "name", ""),
)
def test_grossly_wrong_int8_kernels_fail_the_class(mutant, inputs):
    assert not _check(mutant, *inputs)[0]
    assert _check(Int8Emulated(), *inputs)[0]  # the same inputs, the arithmetic done right


def test_the_class_never_tightens_the_16_bit_bound():
    q, k, v, options = SdpaCase(n_q=1, n_k=1, d_qk=64, d_v=64).inputs("float16")  # out = v: no score error
    ref_out, ref_lse = reference.sdpa(q, k, v, return_lse=True)
    bound, _ = sdpa_bounds(q, k, v, options, "float16", ref_out, ref_lse)
    assert bound.quantised(INT8).value >= bound.value
    assert bound.scaled(2, "twice").quantised(INT8).value == 2 * bound.quantised(INT8).value


def _suite(tmp_path, *args: str, name: str = "run", dtype: str = "float16"):
    return run_suite(tmp_path, f"--dtype={dtype}", "--clauses=sdpa.scale", *args, name=name, profile="quick")


def test_a_16_bit_backend_passes_under_the_class_too(tmp_path):
    """(Its reports without a class are those of tests/test_suite.py: nothing of the class in them.)"""
    code, report, output = _suite(tmp_path, "--backend=numpy", "--tolerance-class=int8", dtype="float32")
    row = report["clauses"]["sdpa.scale"]
    assert code == 0 and row["status"] == "passed" and row["quantised"]["status"] == "passed", output[-2000:]
    assert row["quantised"]["worst16"]["ratio16"] <= 1


def test_a_run_under_the_class_carries_both_verdicts(tmp_path):
    code, report, output = _suite(tmp_path, EMULATED)
    row = report["clauses"]["sdpa.scale"]
    assert code == 1 and "the int8 class's verdict is apart" in output  # the class the backend declares
    assert row["status"] == "failed" and row["failed"] == 1  # the 16-bit verdict is the status, and the exit code
    assert row["quantised"] == {**row["quantised"], "class": "int8", "status": "passed", "passed": 1}
    assert row["quantised"]["worst16"]["ratio16"] > 1 > row["quantised"]["worst"]["ratio"]
    assert "beyond the 16-bit bound" in row["failures"][0]["message"]
    text = markdown(report)
    assert "| worst error / 16-bit bound | int8 class | worst error / int8 bound |" in text
    assert "| `sdpa.scale` | failed | 0 | 1 | 0 | 0 |" in text


@pytest.mark.parametrize(
    "option, declared, selected",
    [(None, None, None), (None, "int8", INT8), ("none", "int8", None), ("int8", None, INT8)],
)
def test_the_class_is_opt_in(option, declared, selected):
    """Only a backend's declaration or ``--tolerance-class`` selects a class; ``none`` turns it off."""
    config = SimpleNamespace(getoption=lambda name: option)
    assert _tolerance_class(config, SimpleNamespace(name="b", tolerance_class=declared)) == selected


def test_the_results_table_gives_the_class_a_column_of_its_own():
    sys.path.insert(0, str(ROOT / "scripts"))
    from results_table import conformance_table

    worst16 = {"error": 0.05, "bound16": 0.01, "bound": 0.2, "ratio16": 5.0, "ratio": 0.25}
    quantised = {"class": "int8", "status": "passed", "passed": 2, "failed": 0, "worst16": worst16, "worst": worst16}
    row = {"status": "failed", "passed": 0, "failed": 2, "skipped": 0, "tests": ["t"], "failures": [], "skips": []}
    report = {"dtypes": ["float16"], "environment": {}, "clauses": {"sdpa": {**row, "quantised": quantised}}}
    env = {"date": "d", "torch": "t", "cuda": "c", "numpy": "n", "python": "p"}
    table = conformance_table(
        {"environment": env, "runs": [{"backend": "q", "exit": 1, "seconds": 1, "report": report}]}
    )
    assert "| clause | q | q, int8 class (not a pass) |" in table
    assert "| `sdpa` | failed (0/2, error 5x the bound) | passed (2/2, error 0.25x its bound) |" in table
