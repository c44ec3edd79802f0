"""Mutants of :mod:`attnspec.lowrank`."""

from __future__ import annotations

from attnspec.backends.numpy_backend import NumpyBackend  # noqa: F401

ALL: tuple = ()
