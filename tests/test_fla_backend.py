"""The flash-linear-attention adapter (``backends/fla.py``): it declines cleanly without fla, and with
fla's kernels (an installed ``fla-core``, or its wheel in ``.whl/`` or ``$ATTNSPEC_WHEELS``) runs them
on the CPU in Triton's interpreter, through the conformance suite of the clauses it maps.

CI installs neither fla nor its wheels: there the tests that need them skip, saying so.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from attnspec import BackendError, load_backend  # noqa: E402
from attnspec.reference import linear  # noqa: E402
from tests.conftest import ROOT, run_suite  # noqa: E402

WHEELS = Path(os.environ.get("ATTNSPEC_WHEELS", ROOT / ".whl"))


def wheel_path(tmp_path_factory, *stems: str) -> str | None:
    """A folder holding the packages (installed: ``""``; else unpacked from the wheels), or None."""
    missing = [s for s in stems if not sorted(WHEELS.glob(f"{s}-*.whl"))]
    if missing:
        return None
    target = tmp_path_factory.mktemp("wheels")
    for stem in stems:
        with zipfile.ZipFile(sorted(WHEELS.glob(f"{stem}-*.whl"))[-1]) as whl:
            whl.extractall(target)
    return str(target)


@pytest.fixture(scope="module")
def fla_path(tmp_path_factory):
    pytest.importorskip("triton", reason="fla's kernels are Triton kernels")
    try:
        import fla.ops  # noqa: F401

        return ""
    except ImportError:
        pass
    path = wheel_path(tmp_path_factory, "fla_core", "einops")
    if path is None:
        pytest.skip(f"fla is not installed and its wheels (fla_core, einops) are not in {WHEELS}")
    return path


@pytest.fixture
def fla_backend(fla_path, monkeypatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("this process runs Triton for the GPU (TRITON_INTERPRET is not 1)")
    if fla_path:
        monkeypatch.syspath_prepend(fla_path)
    return load_backend("fla", device="cpu")


def test_without_fla_the_backend_says_what_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "fla" or m.startswith("fla.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fla", None)  # import fla -> ImportError
    for spec in ("fla", "fla:simple_gla"):
        with pytest.raises(
            BackendError, match=r"needs flash-linear-attention's kernels: pip install 'attnspec\[fla\]'"
        ):
            load_backend(spec, device="cpu")


def test_unknown_variant_is_an_error():
    with pytest.raises(BackendError, match="variant must be one of"):
        load_backend("fla:parallel", device="cpu")


def _linear_inputs(dtype):
    """The smallest case of the float16 finding: one token, D = 1, relu features, a query with no
    positive entry (so its denominator is 0 and the spec's row is exactly 0)."""
    import torch

    q, k, v = (torch.tensor([[[[x]]]], dtype=dtype) for x in (-1.0, 1.0, 1.0))
    return q, k, v


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_float16_zero_denominator_is_nan(fla_backend, form):
    """A finding, kept as a test: fla adds 1e-10 to the denominator in the input dtype, where float16
    rounds it to 0, so a row whose denominator is 0 becomes 0 / 0 = NaN (the spec: exactly 0). In
    float32 the same row is 0."""
    import torch

    want = linear.linear_attention(
        *(np.full((1, 1, 1, 1), x) for x in (-1.0, 1.0, 1.0)), feature_map="relu", causal=True
    )
    options = dict(feature_map="relu", causal=True, form=form, chunk_size=64 if form == "chunked" else None)
    assert float(want) == 0.0
    assert float(fla_backend.linear_attention(*_linear_inputs(torch.float32), **options)) == 0.0
    assert torch.isnan(fla_backend.linear_attention(*_linear_inputs(torch.float16), **options)).all()
    assert float(torch.tensor(1e-10, dtype=torch.float16)) == 0.0


def test_declines_what_does_not_map(fla_backend):
    import torch

    from attnspec import Unsupported

    q = k = v = torch.ones(1, 1, 4, 2)
    for options, reason in (
        (dict(causal=False, form="recurrent"), "causal only"),
        (dict(causal=True, form="parallel"), "no quadratic"),
        (dict(causal=True, form="chunked", chunk_size=5), "fixes its chunk at 64"),
        (dict(causal=True, form="recurrent", eps=0.5), "fixed 1e-10"),
    ):
        with pytest.raises(Unsupported, match=reason):
            fla_backend.linear_attention(q, k, v, **options)
    gammas = torch.tensor([0.5], dtype=torch.float32)
    with pytest.raises(Unsupported, match="fix gammas"):
        fla_backend.retention(q, k, v, gammas=gammas, form="recurrent")


def test_retention_runs_fla_own_decays(fla_backend):
    """The decays fla builds are the spec's 1 - 2^(-5 - h), exactly, in float32."""
    from attnspec.reference.retention import retention_decays

    got = fla_backend.retention_decays(24).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, retention_decays(24).astype(np.float32))


#: Clauses whose drawn cases can reach a relu row with no positive feature: the float16 NaN may show there too.
NAN16 = {c: {"passed", "failed"} for c in ("linear.causal", "linear.feature_map", "linear.grad")}


#: What the suite finds (quick profile, float32 and float16) per variant: every mapped clause passes
#: but ``linear.normalizer`` in float16 (the NaN above), ``linear.chunked``, whose cases almost never
#: draw fla's own chunk of 64 and are declined, and retention clauses that ``fla:chunk`` declines
#: for decays other than fla's.
@pytest.mark.parametrize(
    ("variant", "clauses", "allowed"),
    [
        ("chunk", "linear.*", {"linear.normalizer": {"failed"}, "linear.chunked": {"declined", "passed"}, **NAN16}),
        ("simple_gla", "retention.*", {}),
    ],
)
def test_conformance_through_the_interpreter(fla_path, tmp_path, monkeypatch, variant, clauses, allowed):
    if fla_path:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [fla_path, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    code, report, output = run_suite(
        tmp_path, f"--backend=fla:{variant}", "--device=cpu", f"--clauses={clauses}", profile="quick"
    )
    statuses = {
        c: r["status"] for c, r in report.get("clauses", {}).items() if r["status"] not in ("unsupported", "not run")
    }
    assert statuses, output[-3000:]
    for clause, status in statuses.items():
        assert status in allowed.get(clause, {"passed", "declined"} if clause.endswith(".cost") else {"passed"}), (
            clause,
            status,
            output[-3000:],
        )
    failed = [line for line in output.splitlines() if line.startswith("FAILED")]
    assert all("[float16]" in line for line in failed), failed  # the NaN finding, nothing else
    if "linear.normalizer" in allowed:
        assert "non-finite where the reference is not" in output and "float16" in output
