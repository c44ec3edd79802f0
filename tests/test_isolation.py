"""Option isolation finds the smallest failing set of options (``conformance/isolation.py``); that
the suite reports it for real interaction bugs is proven on mutants in ``tests/test_mutants.py``."""

from __future__ import annotations

from attnspec.conformance import isolation

OPTIONS = dict(causal="bottom_right", window=(4, 0), softcap=0.5, bias=1, q_lens=2, kv_lens=3, scale=0.3)


def test_only_the_interacting_options_are_kept():
    kept, undecided = isolation.smallest_failing(OPTIONS, lambda o: "softcap" in o and "bias" in o)
    assert set(kept) == {"softcap", "bias"} and undecided == []
    assert isolation.note(OPTIONS, kept) == "isolation: fails with only bias, softcap (clauses sdpa.bias, sdpa.softcap)"


def test_lengths_are_removed_together():
    kept, _ = isolation.smallest_failing(OPTIONS, lambda o: "window" in o and "kv_lens" in o)
    assert set(kept) == {"window", "q_lens", "kv_lens"}


def test_a_retry_that_cannot_run_keeps_its_option_and_says_so():
    def fails(options):
        if "causal" not in options:
            raise RuntimeError("the backend cannot run this")
        return None if "mask" not in options else True

    options = dict(OPTIONS, mask=1)
    kept, undecided = isolation.smallest_failing(options, fails)
    assert set(kept) == {"causal", "mask"} and undecided == ["causal", "mask"]
    assert isolation.note(options, kept, undecided).endswith(
        "; without causal, mask the backend could not run the case"
    )


def test_notes_for_plain_and_irreducible_cases():
    assert "plain attention differs" in isolation.note(OPTIONS, {})
    assert "every option of the case is needed" in isolation.note({"mask": 1}, {"mask": 1})
