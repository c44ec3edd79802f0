"""The float64 NumPy reference: the oracle every backend is checked against.

One module per family: :mod:`.sdpa` (dense attention and its options), :mod:`.masks`
(visibility rules and score modifiers as index functions), :mod:`.flash` (tiled online
softmax, split-KV, KV-cache decoding), :mod:`.multihead`, and the positional encodings
:mod:`.absolute`, :mod:`.rope`, :mod:`.alibi`, :mod:`.relative`, and one module per family of
:mod:`attnspec.sparse` to :mod:`attnspec.retention`. Each operation's function registers itself
with :func:`attnspec.clauses.reference`; importing this package imports every module, so
:data:`attnspec.clauses.REFERENCES` is complete.
"""

import importlib
import pkgutil

from attnspec.reference.flash import KVCache, decode, flash_forward, merge_partials, split_kv
from attnspec.reference.multihead import mha
from attnspec.reference.sdpa import sdpa

__all__ = ["sdpa", "mha", "flash_forward", "merge_partials", "split_kv", "decode", "KVCache"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
