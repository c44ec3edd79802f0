"""Retention (RetNet): parallel, recurrent and chunkwise forms with per-head decays."""

from attnspec.clauses import clause, operations  # noqa: F401
