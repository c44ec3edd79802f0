"""The float64 NumPy reference: the oracle every backend is checked against.

One module per family: :mod:`.sdpa` (dense attention and its options), :mod:`.masks`
(visibility rules and score modifiers as index functions), :mod:`.flash` (tiled online
softmax, split-KV, KV-cache decoding), :mod:`.multihead`, and the positional encodings
:mod:`.absolute`, :mod:`.rope`, :mod:`.alibi`, :mod:`.relative`.
"""

from attnspec.reference.flash import KVCache, decode, flash_forward, merge_partials, split_kv
from attnspec.reference.multihead import mha
from attnspec.reference.sdpa import sdpa

__all__ = ["sdpa", "mha", "flash_forward", "merge_partials", "split_kv", "decode", "KVCache"]
