"""The conformance suite: ``pytest conformance --backend=NAME``.

One test file per spec section (``test_sdpa.py`` for :mod:`attnspec.sdpa`, ...). The machinery:
:mod:`.plugin` (options, backend, per-clause summary and JSON report), :mod:`.cases` and
:mod:`.strategies` (inputs that find kernel bugs), :mod:`.tolerance` (the bound of
:mod:`attnspec.tolerance`), :mod:`.assertions` (checks whose messages name the clause),
:mod:`.calls` (calling a backend across the array boundary).
"""
