"""Every (case, role) of the matrix for ``--backend``: timed by the shared timer, through
pytest-benchmark's ``pedantic`` (its rounds are CUDA-event device times on a GPU)."""

from __future__ import annotations

import zlib

import pytest


def test_attention(bench, case, role, benchmark):
    seed = zlib.crc32(case.id.encode())
    record = bench.run(case, role, seed, runner=benchmark)
    benchmark.extra_info.update(record)
    if "declined" in record:
        pytest.skip(f"declined: {record['declined']}")
    if "error" in record:
        pytest.fail(record["error"], pytrace=False)
