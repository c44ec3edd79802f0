"""Sparse and structured attention: fixed sparsity patterns over the score matrix."""

from attnspec.clauses import clause, operations  # noqa: F401
