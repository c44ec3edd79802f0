"""Hierarchical and routed attention: NSA-style block selection, routing by centroids, LSH buckets."""

from attnspec.clauses import clause, operations  # noqa: F401
