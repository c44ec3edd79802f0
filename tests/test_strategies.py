"""The case strategies themselves: ``--shapes=menu`` keeps every drawn shape on the menu; ``--shapes=gpu``
reaches past a GPU kernel's tiles."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from attnspec.backends.numpy_backend import NumpyBackend
from attnspec.conformance import strategies, target
from attnspec.conformance.strategies import MENU_SHAPES, sdpa_cases


def _shape(case) -> tuple[int, ...]:
    return case.batch, case.h_q, case.h_kv, case.n_q, case.n_k, case.d_qk, case.d_v


def _drawn_shapes(monkeypatch, *, menu: bool, tier: str = "all", **kwargs) -> set:
    tier = "menu" if menu else tier
    monkeypatch.setattr(target, "CURRENT", target.Target(NumpyBackend(), "numpy", ("float64",), shapes=tier))
    seen = set()

    @settings(max_examples=150, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=sdpa_cases(extras=True, **kwargs))
    def draw(case):
        seen.add(_shape(case))

    draw()
    return seen


def test_menu_draws_whole_shapes_from_the_menu(monkeypatch):
    seen = _drawn_shapes(monkeypatch, menu=True)
    assert seen <= set(MENU_SHAPES) and len(seen) == len(MENU_SHAPES)


def test_without_the_menu_shapes_vary_freely(monkeypatch):
    assert len(_drawn_shapes(monkeypatch, menu=False) - set(MENU_SHAPES)) > 20


def test_gpu_tier_draws_lengths_and_head_dims_past_the_tiles(monkeypatch):
    seen = _drawn_shapes(monkeypatch, menu=False, tier="gpu")
    lengths = {n for s in seen for n in s[3:5]}
    assert set(strategies.GPU_LENGTHS) & lengths and 256 in {d for s in seen for d in s[5:]}
    assert not {n for s in _drawn_shapes(monkeypatch, menu=False) for n in s[3:5]} & set(strategies.GPU_LENGTHS)


@pytest.mark.parametrize("max_len", [1, 24])
def test_menu_respects_length_limits_and_mha_only_backends(monkeypatch, max_len):
    seen = _drawn_shapes(monkeypatch, menu=True, gqa=False, max_len=max_len)
    assert all(n_q <= max_len and n_k <= max_len and h_q == h_kv for _, h_q, h_kv, n_q, n_k, _, _ in seen), seen
    assert len(seen) == len(
        {(b, h, min(nq, max_len), min(nk, max_len), dq, dv) for b, h, _, nq, nk, dq, dv in strategies.MENU_SHAPES}
    )


def test_menu_lengths_are_clamped_to_a_short_backend(monkeypatch):
    """Regression: with max_seq_len 16 the menu kept only length 1, so a test needing 2 drew nothing."""
    backend = NumpyBackend()
    backend.max_seq_len = 16
    monkeypatch.setattr(target, "CURRENT", target.Target(backend, "numpy", ("float64",), shapes="menu"))
    seen = set()

    @settings(max_examples=50, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(n=strategies.lengths(40).filter(lambda n: n >= 2))
    def draw(n):
        seen.add(n)

    draw()
    assert seen == {16}
