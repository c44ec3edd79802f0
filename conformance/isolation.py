"""Option isolation: the smallest set of a failing case's options that still fails.

A case drawn for one clause often carries options that have nothing to do with its failure.
Before a failure is reported, the case is retried with each option removed in turn (the lengths
``q_lens``/``kv_lens`` together); an option whose removal leaves the failure in place is dropped
for good. What remains is a set in which every option is needed (1-minimal, found with at most
one retry per option), reported with the clauses those options belong to: "fails only with
softcap and bias" points at their interaction.
"""

from __future__ import annotations

from collections.abc import Callable

#: Options removed together, and the clause each group of options belongs to.
GROUPS: dict[tuple[str, ...], str] = {
    ("scale",): "sdpa.scale",
    ("causal",): "sdpa.causal.*",
    ("window", "window_align"): "sdpa.window",
    ("mask",): "sdpa.mask",
    ("bias",): "sdpa.bias",
    ("softcap",): "sdpa.softcap",
    ("alibi_slopes",): "sdpa.alibi",
    ("q_lens", "kv_lens"): "sdpa.padding",
}


def smallest_failing(options: dict, fails: Callable[[dict], bool | None]) -> tuple[dict, list[str]]:
    """``(kept, undecided)``: ``options`` with every group removed whose removal keeps ``fails``
    true, and the options whose removal could not be judged (``fails`` None or raising: the
    backend declines or cannot run the smaller case), which stay in ``kept``."""
    keep, undecided = dict(options), []
    for group in GROUPS:
        present = [name for name in group if name in keep]
        if not present:
            continue
        trial = {name: value for name, value in keep.items() if name not in group}
        try:
            still = fails(trial)
        except Exception:
            still = None
        if still is None:
            undecided += present
        elif still:
            keep = trial
    return keep, undecided


def note(options: dict, kept: dict, undecided: list[str] | None = None) -> str:
    """The isolation line of a failure message."""
    if not options:
        return "isolation: the case has no options"
    if not kept:
        return "isolation: fails with every option removed too (plain attention differs)"
    clauses = [clause for group, clause in GROUPS.items() if any(name in kept for name in group)]
    names = ", ".join(sorted(kept))
    untried = f"; without {', '.join(undecided)} the backend could not run the case" if undecided else ""
    if len(kept) == len(options):
        return f"isolation: every option of the case is needed to fail ({names}; clauses {', '.join(clauses)}){untried}"
    return f"isolation: fails with only {names} (clauses {', '.join(clauses)}){untried}"
