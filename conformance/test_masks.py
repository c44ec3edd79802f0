"""Conformance of the visibility rules (spec section :mod:`attnspec.sdpa`, its last clauses).

Each rule is checked three ways: numerically against the reference, by reading the attention
pattern exactly through a one-hot V, and by poisoning the keys it hides.
"""

import numpy as np
import pytest
from hypothesis import example, given

from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.probes import check_pattern, check_poisoned, check_sdpa, should
from attnspec.conformance.strategies import sdpa_cases

PROBE_LEN = 96  # one-hot V needs D_v = N_k


@pytest.mark.clause("sdpa.causal.top_left")
@given(case=sdpa_cases(causal="top_left", extras=True))
@example(case=SdpaCase(n_q=2, n_k=5, causal="top_left"))
@example(case=SdpaCase(n_q=5, n_k=2, causal="top_left"))
def test_causal_top_left(check, dtype, case):
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.causal.top_left")
@given(case=sdpa_cases(causal="top_left", max_len=PROBE_LEN))
@example(case=SdpaCase(n_q=65, n_k=64, causal="top_left"))
def test_causal_top_left_pattern(check, dtype, case):
    check_pattern(check, case, dtype)


@pytest.mark.clause("sdpa.causal.bottom_right")
@given(case=sdpa_cases(causal="bottom_right", extras=True))
@example(case=SdpaCase(n_q=2, n_k=5, causal="bottom_right"))
@example(case=SdpaCase(n_q=5, n_k=2, causal="bottom_right"))
def test_causal_bottom_right(check, dtype, case):
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.causal.bottom_right")
@given(case=sdpa_cases(causal="bottom_right", max_len=PROBE_LEN))
@example(case=SdpaCase(n_q=3, n_k=65, causal="bottom_right"))
@example(case=SdpaCase(n_q=7, n_k=7, causal="bottom_right"))
def test_causal_bottom_right_pattern(check, dtype, case):
    check_pattern(check, case, dtype)


@pytest.mark.clause("sdpa.window")
@given(case=sdpa_cases(window=True, extras=True))
@example(case=SdpaCase(n_q=9, n_k=9, window=(2, 0)))
def test_window(check, dtype, case):
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.window")
@given(case=sdpa_cases(window=True, max_len=PROBE_LEN))
@example(case=SdpaCase(n_q=9, n_k=9, window=(3, 0)))
@example(case=SdpaCase(n_q=4, n_k=17, window=(1, 2)))
def test_window_pattern(check, dtype, case):
    """Window (w - 1, 0) sees exactly w keys: both bounds inclusive, bottom-right aligned."""
    check_pattern(check, case, dtype)


@pytest.mark.clause("sdpa.window.top_left")
@given(case=sdpa_cases(window=True, extras=True).map(lambda case: case.with_(window_align="top_left")))
@example(case=SdpaCase(n_q=2, n_k=5, window=(1, 0), window_align="top_left"))
@example(case=SdpaCase(batch=2, n_q=5, n_k=12, q_lens=(5, 3), kv_lens=(9, 12), window=(2, 1), window_align="top_left"))
def test_window_top_left(check, dtype, case):
    """The window measured from the query's own index: ONNX's rule without a KV cache."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.window.top_left")
@given(case=sdpa_cases(window=True, max_len=PROBE_LEN).map(lambda case: case.with_(window_align="top_left")))
@example(case=SdpaCase(n_q=4, n_k=17, window=(1, 2), window_align="top_left"))
def test_window_top_left_pattern(check, dtype, case):
    check_pattern(check, case, dtype)


@pytest.mark.clause("sdpa.window")
@given(case=sdpa_cases(window=True))
@example(case=SdpaCase(n_q=2, n_k=40, window=(3, 0)))
def test_window_hidden_keys_do_not_leak(check, dtype, case):
    check_poisoned(check, case, dtype)


@pytest.mark.clause("sdpa.window")
@given(case=sdpa_cases(window=True))
@example(case=SdpaCase(n_q=2, n_k=40, window=(3, 0)))
def test_window_hidden_nan_does_not_reach_the_output(check, dtype, case):
    """SHOULD (``sdpa``): NaN stored at in-range keys the window hides from every query."""
    with should():
        check_poisoned(check, case, dtype, value=np.nan)


@pytest.mark.clause("sdpa.causal.top_left")
@given(case=sdpa_cases(causal="top_left"))
@example(case=SdpaCase(n_q=3, n_k=70, causal="top_left"))
def test_causal_hidden_nan_does_not_reach_the_output(check, dtype, case):
    """SHOULD (``sdpa``): NaN stored at in-range keys after every query's causal bound."""
    with should():
        check_poisoned(check, case, dtype, value=np.nan)


@pytest.mark.clause("sdpa.mask")
@given(case=sdpa_cases(mask=True))
@example(case=SdpaCase(n_q=3, n_k=20, mask="per_key", mask_density=0.2))
def test_masked_nan_does_not_reach_the_output(check, dtype, case):
    """SHOULD (``sdpa``): NaN stored at in-range keys the mask hides from every query."""
    with should():
        check_poisoned(check, case, dtype, value=np.nan)


@pytest.mark.clause("sdpa.mask")
@given(case=sdpa_cases(mask=True, max_len=PROBE_LEN))
def test_mask_pattern(check, dtype, case):
    check_pattern(check, case, dtype)


@pytest.mark.clause("sdpa.mask")
@given(case=sdpa_cases(mask=True))
@example(case=SdpaCase(n_q=3, n_k=20, mask="per_key", mask_density=0.2))
def test_masked_keys_do_not_leak(check, dtype, case):
    check_poisoned(check, case, dtype)


@pytest.mark.clause("sdpa.padding")
@given(case=sdpa_cases(padding=True, extras=True))
@example(case=SdpaCase(batch=2, n_q=5, n_k=65, q_lens=(5, 1), kv_lens=(64, 65), causal="bottom_right"))
@example(case=SdpaCase(batch=2, n_q=5, n_k=12, q_lens=(5, 3), kv_lens=(9, 12), window=(2, 0)))
def test_padding(check, dtype, case):
    """Causal, window and ALiBi align with each batch item's effective lengths."""
    check_sdpa(check, case, dtype)


@pytest.mark.clause("sdpa.padding")
@given(case=sdpa_cases(padding=True, max_len=PROBE_LEN))
def test_padding_pattern(check, dtype, case):
    check_pattern(check, case, dtype)


@pytest.mark.clause("sdpa.padding")
@given(case=sdpa_cases(padding=True, extras=True))
@example(case=SdpaCase(batch=2, n_q=3, n_k=9, q_lens=(2, 3), kv_lens=(4, 0)))
def test_padding_is_never_read(check, dtype, case):
    """NaN stored past q_lens and kv_lens leaves every output finite and unchanged."""
    check_poisoned(check, case, dtype)
