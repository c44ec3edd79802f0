"""Linear attention: kernel feature maps, the efficient-attention form, Performer (FAVOR+)."""

from attnspec.clauses import clause, operations  # noqa: F401
