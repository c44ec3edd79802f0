"""``-p attnspec.conformance.gpus --gpus=N``: each pytest-xdist worker sees one GPU of N."""

from __future__ import annotations

import pytest

from attnspec.conformance.gpus import worker_gpu

pytest_plugins = ["pytester"]


def PIN(n):  # noqa: N802 (reads as the constant it stands for)
    return ["-p", "attnspec.conformance.gpus", f"--gpus={n}"]


@pytest.mark.parametrize(
    "index, gpus, visible, expected",
    [(0, 2, None, "0"), (3, 2, None, "1"), (5, 8, "", "5"), (1, 2, "4,6", "6"), (2, 2, "4,6", "4")],
)
def test_worker_gets_gpu_index_mod_n_of_what_is_visible(index, gpus, visible, expected, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert worker_gpu(index, gpus, visible) == expected


def test_more_gpus_than_visible_is_a_usage_error():
    with pytest.raises(pytest.UsageError, match="names 1"):
        worker_gpu(0, 2, "3")


def test_two_workers_see_two_gpus(pytester, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pytester.makepyfile(
        test_probe="""
        import os
        import pytest

        @pytest.mark.parametrize("i", range(8))
        def test_probe(i):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            with open(f"seen-{worker}.txt", "a") as f:
                f.write(os.environ["CUDA_VISIBLE_DEVICES"] + "\\n")
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "attnspec.conformance.gpus", "--gpus=2", "-p", "xdist", "-n", "2", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=8)
    seen = {path.stem: set(path.read_text().split()) for path in pytester.path.glob("seen-*.txt")}
    assert seen == {"seen-gw0": {"0"}, "seen-gw1": {"1"}}


@pytest.mark.parametrize(
    "extra, gpus, expected",
    [
        (["--shapes=all"], 1, ["--shapes=all"]),
        (["-p", "xdist", "-n", "2"], 4, ["-p", "xdist", "-n", "4", *PIN(4)]),
        (["-p", "xdist", "-n", "12"], 4, ["-p", "xdist", "-n", "12", *PIN(4)]),
        (["--dtype=float32"], 2, ["--dtype=float32", "-p", "xdist", "-n", "2", *PIN(2)]),
    ],
)
def test_gpu_conformance_spreads_each_run_over_the_gpus(extra, gpus, expected):
    from scripts.gpu_conformance import spread

    assert spread(extra, gpus) == expected
