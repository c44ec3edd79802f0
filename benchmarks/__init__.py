"""The benchmark: ``pytest benchmarks --backend=NAME --benchmark-json=FILE`` (pytest-benchmark).

Not part of the project's test run (``pytest tests conformance``): its file is ``bench_*.py``, which
only ``benchmarks/conftest.py`` collects. ``scripts/gpu_bench.py`` drives it on the GPU and writes
``docs/results/``.
"""
