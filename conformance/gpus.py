"""One GPU per pytest-xdist worker: ``pytest -p attnspec.conformance.gpus --gpus=N -n K conformance ...``.

Worker ``gwI`` sees only GPU ``I mod N`` (``CUDA_VISIBLE_DEVICES``; an index into the list already
set there, if any), so K >= N workers spread a backend's suite over every GPU of a host and the
xdist controller merges their results into the one ``--report`` as it does for any run. The
variable is set when the worker configures pytest, before anything in it initialises CUDA (which
reads it once); the controller itself computes nothing on a GPU.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.getgroup("attnspec").addoption(
        "--gpus", type=int, default=None, metavar="N", help="with -n: pin xdist worker I to GPU I mod N"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # workerinput is set by pytest-xdist in its workers only (an inherited PYTEST_XDIST_WORKER is
    # also seen by a pytest that a worker starts, which is no worker of this run)
    gpus, worker = config.getoption("gpus"), getattr(config, "workerinput", {}).get("workerid")
    if gpus is not None and gpus < 1:
        raise pytest.UsageError(f"--gpus must be a positive number of GPUs; got {gpus}")
    if gpus and worker:
        os.environ["CUDA_VISIBLE_DEVICES"] = worker_gpu(int(worker.removeprefix("gw")), gpus)


def worker_gpu(index: int, gpus: int, visible: str | None = None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` of worker ``index``: entry ``index mod gpus`` of what is visible."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    names = [n for n in (visible or "").split(",") if n] or [str(i) for i in range(gpus)]
    if len(names) < gpus:
        raise pytest.UsageError(f"--gpus={gpus}, but CUDA_VISIBLE_DEVICES={visible!r} names {len(names)}")
    return names[index % gpus]
