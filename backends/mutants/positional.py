"""Mutants of the positional encodings."""
ALL = []
