"""Low-rank and memory attention: Linformer projections, Transformer-XL segment memory."""

from attnspec.clauses import clause, operations  # noqa: F401
