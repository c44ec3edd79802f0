"""Mutants of :mod:`attnspec.hierarchical`."""

from __future__ import annotations

from attnspec.backends.numpy_backend import NumpyBackend  # noqa: F401

ALL: tuple = ()
