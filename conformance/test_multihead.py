"""Conformance of multi-head attention with projections (spec section :mod:`attnspec.multihead`)."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from attnspec import reference
from attnspec.conformance.calls import call
from attnspec.conformance.cases import SdpaCase
from attnspec.conformance.dtypes import rounded
from attnspec.conformance.strategies import declares, sdpa_cases
from attnspec.conformance.tolerance import mha_bound


@pytest.mark.clause("mha")
@given(case=sdpa_cases(magnitudes=("unit",)), d_model=st.sampled_from([1, 8, 24, 40]), self_attention=st.booleans())
@example(case=SdpaCase(h_q=4, h_kv=2, n_q=5, n_k=5, d_qk=8, d_v=4), d_model=8, self_attention=True)
def test_mha(check, dtype, case, d_model, self_attention):
    """Projections act on the right and split head-major; heads merge back before W_O."""
    if self_attention:
        case = case.with_(n_k=case.n_q)
    x_q, x_kv, weights = mha_inputs(case, dtype, d_model, self_attention)
    options = {"causal": "bottom_right"} if declares("sdpa.causal.bottom_right") and case.seed % 2 else {}
    out = call("mha", x_q, x_kv, **weights, **options)
    ref = reference.mha(x_q, x_kv, **weights, **options)
    check.close(out, ref, mha_bound(x_q, x_kv, weights, options, dtype, ref), what="mha out", case=case)


def mha_inputs(case: SdpaCase, dtype: str, d_model: int, self_attention: bool) -> tuple:
    """``(x_q, x_kv, weights)`` in ``dtype``: inputs of ``d_model`` channels, projections of variance ``1 / fan-in``."""
    rng = np.random.default_rng(case.seed)
    x_q = rounded(rng.standard_normal((case.batch, case.n_q, d_model)), dtype)
    x_kv = x_q if self_attention else rounded(rng.standard_normal((case.batch, case.n_k, d_model)), dtype)
    std = 1 / np.sqrt(d_model)
    weights = {
        "w_q": rounded(rng.standard_normal((d_model, case.h_q * case.d_qk)) * std, dtype),
        "w_k": rounded(rng.standard_normal((d_model, case.h_kv * case.d_qk)) * std, dtype),
        "w_v": rounded(rng.standard_normal((d_model, case.h_kv * case.d_v)) * std, dtype),
        "w_o": rounded(rng.standard_normal((case.h_q * case.d_v, d_model)) / np.sqrt(case.h_q * case.d_v), dtype),
        "num_heads": case.h_q,
        "num_kv_heads": case.h_kv,
    }
    return x_q, x_kv, weights
