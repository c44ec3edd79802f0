"""Which way this process runs Triton: compiled for the GPU, or in its interpreter on the CPU.

``triton.jit`` reads ``TRITON_INTERPRET`` when a function is defined (Triton's own library
functions, ``tl.max`` and ``tl.cdiv``, included), so the choice is made once per process, before
Triton is imported. Every backend whose kernels are Triton's (ours, fla's, SageAttention's,
xFormers') makes it here.
"""

from __future__ import annotations

import os
import sys

from attnspec.contract import BackendError


def select_mode(interpret: bool, who: str) -> None:
    """Set ``TRITON_INTERPRET`` if Triton is not imported yet; else a BackendError naming ``who`` and
    what to set, if it was imported the other way."""
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        return
    import triton.language.standard as library
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(library.cdiv, InterpretedFunction) != interpret:
        raise BackendError(
            f"Triton was imported for {'the GPU' if interpret else 'the interpreter'} before the {who} backend "
            f"was loaded; in a new process, {'set TRITON_INTERPRET=1' if interpret else 'unset TRITON_INTERPRET'}"
            " before Python starts (or load the backend before anything imports triton)"
        )
