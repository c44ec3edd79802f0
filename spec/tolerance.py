"""The tolerance policy: how close a kernel must be to the float64 reference.

A kernel computes in finite precision on inputs already rounded to its dtype; the oracle is
the float64 reference evaluated on those same rounded inputs. The bound is relative to what
the dtype can do, measured in the same run, rather than a fixed table that is loose for one
shape and tight for another. The policy follows the field (flash-attention's tests compare
against a same-precision naive implementation, FA3 adds a floor; PyTorch and FlexAttention
use a float64 golden).
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``k``: the error allowed, in multiples of the naive same-precision implementation's error.
NAIVE_FACTOR = 3.0
#: The floor for 16- and 32-bit dtypes: this many ``eps(dtype) * max|v|``.
FLOOR_EPS = 2.0
#: The floor's second term: this many times the case's measured sensitivity to float32 rounding.
SENSITIVITY_FACTOR = 4.0
#: The float64 bound: this many ``eps(float64)`` times the error-propagation size.
FLOAT64_EPS = 4.0
#: "Unchanged" in invariance probes (causality, batch independence): this many ``eps * max|v|``.
UNCHANGED_EPS = 2.0


def tolerance_policy():
    """Numerical equivalence: the bound every numerical comparison of the suite uses.

    Let ``ref`` be the float64 reference on the rounded inputs, ``out`` the kernel's result as
    float64, and ``err(x) = max |x - ref|`` over all elements.

    - For float16, bfloat16 and float32, ``naive`` is the same formula evaluated in that
      precision (scores, probabilities and the output each rounded to the dtype, accumulation in
      float32, products summed one term at a time). A kernel conforms if
      ``err(out) <= NAIVE_FACTOR * err(naive) + floor``, where the floor is
      ``FLOOR_EPS * eps(dtype) * max|v| + SENSITIVITY_FACTOR * sens``, and ``sens`` is how far the
      exact result moves when every element of ``q`` is perturbed by a random relative
      ``sqrt(D_qk) * eps(float32)``, every final score by ``eps(float32)`` and every element of ``v``
      by ``sqrt(N_k) * eps(float32)`` (the
      probabilistic rounding-error size of float32 accumulation, Higham and Mary 2019). The naive
      error alone is a poor yardstick on a handful of elements, where it can be small by luck;
      the sensitivity term is the error any correct float32-accumulating kernel may have.
    - For float64 a kernel conforms if
      ``err(out) <= FLOAT64_EPS * eps(float64) * max|v| * (D_qk * A + N_k + 1)``,
      with ``A`` the largest ``|scale| * sum_d |q_id| |k_jd|`` plus the largest additive score
      term: a few ulps scaled by the reduction lengths.
    - The LSE obeys the same rules with ``max(1, max|lse_ref|)`` in place of ``max|v|``.
    - A NaN or infinity in ``out`` where ``ref`` is finite fails regardless of the bound; where
      ``ref`` is ``-inf`` (the LSE of a row without keys) the result must be ``-inf`` exactly; a NaN
      in ``ref`` is a harness error and never passes.
    - Structural properties (masked keys carry exactly zero weight, fully masked rows are exactly
      zero, unchanged rows stay within ``UNCHANGED_EPS * eps(dtype) * max|v|``) are checked
      exactly or to a few ulps, because a relative bound cannot see one wrong key among a
      thousand in bfloat16.
    - Magnitudes: the same bounds hold at every score magnitude the dtype represents. The suite
      draws unit scores, "large" ones (past ``exp``'s overflow point) and a "huge" tier where every
      score of a row is near ``+M`` or ``-M`` plus an O(1) part (``M = 2.5e5``, the raw scores
      reported in a served bfloat16 model without QK-norm; float16's tier stays where ``q . k``
      is finite). The rule is unchanged: the final-score jitter of ``sens`` is relative, so it
      allows ``eps(float32) * M`` per score, what any float32-accumulating kernel pays at that
      magnitude; a kernel that masks with a finite stand-in (``-1e4``) or skips the row-maximum
      subtraction is off by far more than that and fails.

    .. versionadded:: 0.1.0
    """


def gradient_tolerance():
    """The tolerance policy for gradients (``sdpa.grad``): the same rule, applied to each gradient.

    ``dq``, ``dk``, ``dv`` (and ``dbias``) are each judged as an output of their own, by the rule of
    :func:`tolerance_policy`:

    - ``naive`` is the backward pass evaluated in the dtype as autograd through a naive attention
      computes it: the forward's scores, probabilities and output, then ``dP``, ``dS`` and (with a
      softcap) ``dR``, each stored in the dtype; every product accumulated in float32. So the naive
      run rounds ``dS`` to 16 bits before ``dq = scale dS k``, as FlashAttention-2 does, and takes
      ``D = rowsum(dout * out)`` from the output stored in the dtype.
    - The floor of gradient ``x`` is ``FLOOR_EPS * eps(dtype) * |x|_abs + SENSITIVITY_FACTOR * sens``,
      ``|x|_abs`` the largest element of its formula evaluated on absolute values (``dS = P (dP - D)``
      cancels: with one visible key ``dS`` is exactly 0 while ``dP`` and ``D`` are not, and a kernel
      computing them in float32 rounds each, as the forward's floor is on ``max|v|``, not ``|out|``);
      ``sens`` the largest move of the exact gradients when float32 rounding perturbs their inputs:
      the final scores by ``eps(float32)``, and ``q``, ``k``, ``v`` and ``dout`` each by
      ``sqrt(n) * eps(float32)`` relative, ``n`` the longest float32 sum that input enters (``q``:
      ``D_qk`` or the ``G * N_q`` rows summed into ``dk``; ``k``: ``D_qk`` or the ``N_k`` keys summed
      into ``dq``; ``v``: ``N_k`` or the ``D_v`` terms of ``dP``; ``dout``: ``D_v`` or the rows summed
      into ``dv``); and ``S - lse``, from which ``P = exp(S - lse)`` is recomputed, per row by
      ``eps(float32) * (|lse| + 1 + sqrt(D_qk) * |scale| * max_j sum_d |q_id k_jd|)`` absolute: the
      FlashAttention-2 backward stores the LSE in float32 and computes the scores again, in another
      summation order than the forward's, errors the naive run (which keeps ``P``) does not make.
    - Why this has teeth: an error the naive run does not make is a different formula, not a
      rounding. ``dS`` rounded to 16 bits in a float32 kernel moves ``dq`` by ``2^-9`` relative,
      thousands of float32 ulps; ``dk`` of one query head instead of the group's sum, the LSE in
      base 2 (``P`` off by ``exp(lse (1 - 1/ln 2))``), a mask missing in the backward (``P`` nonzero at
      hidden keys) or ``D`` from a 16-bit output in a float32 kernel are each far beyond a floor of a
      few float32 ulps of the gradient's magnitude. In a 16-bit kernel, rounding ``dS`` or ``out`` to
      the dtype is what the naive run does, and passes.
    - At 64 bits gradient ``x`` conforms within ``FLOAT64_EPS * eps(float64) * |x|_abs * (size + N_k
      + G * N_q + D_v)``: ``|x|_abs`` the largest element of its formula evaluated on absolute values,
      ``size`` the forward's propagation size.
    - Exact zeros (hidden keys, padded positions, rows without keys) are checked exactly
      (``sdpa.grad.hidden``), as the forward's structural properties are.
    - The families' backward passes (``linear.grad``, ``retention.grad``) follow the same rule: the
      naive run is the family's backward reference evaluated in the dtype; the floor is
      ``FLOOR_EPS * eps(dtype)`` times each gradient's formula on absolute values (the normaliser's
      term added, not subtracted), plus ``SENSITIVITY_FACTOR`` times how far the exact gradients
      move when ``q``, ``k``, ``v``, ``dout`` and the carried state are each perturbed by
      ``sqrt(n) * eps(float32)``, ``n`` the longest float32 sum each enters. At 64 bits it is
      ``FLOAT64_EPS`` ulps of the magnitude times the roundings: ``F + N_k + N_q + D_v + 4`` for
      linear attention and, for retention, each decay ``g^e`` weighted by
      ``D_k + D_v + N + 4 + e (1 + |log g|)``. ``sparse.block_sparse.grad`` is judged by this
      policy with the layout's mask (``conformance/grad_bounds.py``).

    .. versionadded:: 0.2.0
    """


@dataclass(frozen=True)
class QuantisedClass:
    """A quantised kernel's arithmetic, as far as its tolerance depends on it (:func:`quantised_tolerance`)."""

    name: str
    #: Query rows (of one head) that share one int8 scale.
    q_block: int
    #: Keys (of one KV head) that share one int8 scale.
    k_block: int
    #: The format ``P`` and ``V`` are multiplied in, and ``P V`` partial sums stored in: ``"float16"``
    #: (or ``"float8_e4m3fn"``, for a class of FP8 ``P V`` kernels).
    pv_format: str


#: The opt-in tolerance classes for quantised kernels, by the name a backend or ``--tolerance-class`` gives.
QUANTISED_CLASSES = {
    # SageAttention 1 (sageattn): Q per 128 rows, K per 64 keys, P and V in float16.
    "int8": QuantisedClass("int8", q_block=128, k_block=64, pv_format="float16"),
}
#: Levels of a symmetric int8 quantiser: a block's largest magnitude maps to this integer.
INT8_LEVELS = 127
#: Random draws of a quantised class's sensitivity: a kernel whose rounding is one more draw exceeds all of them
#: with probability at most ``1 / (draws + 1)``, the chance of a false failure where the format cannot tell
#: which of two keys wins.
QUANTISED_DRAWS = 16


def quantised_tolerance():
    """Quantised kernels (opt-in): a bound in the quantised format's steps, reported beside the 16-bit verdict.

    A kernel that computes ``Q K^T`` from int8 (SageAttention) cannot meet :func:`tolerance_policy`:
    its error is set by the quantiser's step, not by the dtype's rounding. That is a finding to
    quantify. A backend that declares a class of :data:`QUANTISED_CLASSES` (``tolerance_class =
    "int8"``), or a run given ``--tolerance-class=NAME``, is also judged by this rule; the result
    carries both verdicts, and the 16-bit one stays the clause's status: a pass under a class is
    never a pass.

    - Format. ``x = scale * q`` is quantised per block of ``q_block`` query rows of one head, ``k``
      per block of ``k_block`` keys of one KV head: ``x ~ step * round(x / step)``, ``step =
      max|x over the block| / INT8_LEVELS``, so each element errs by at most ``step / 2`` (half a
      quantisation step, the int8 format's ulp). ``P`` and ``V`` are multiplied, and partial sums of
      ``P V`` stored, in ``pv_format``, whose unit roundoff ``u`` is half its ``eps`` (float16
      ``2^-11``; FP8 e4m3 ``2^-4``, with V scaled into its range).
    - Propagation, to first order. A score moves by ``ds_ij = scale (dq_i . k_j + q_i . dk_j)``: at
      most ``(step_q |k_j|_1 + step_k |q_i|_1) / 2`` (with ``scale`` folded into q's step), and as
      independent uniform errors about ``sqrt((step_q^2 |k_j|^2 + step_k^2 |q_i|^2) / 12)``. The
      softmax turns score errors into ``d out_i = sum_j p_ij ds_ij (v_j - out_i)``, at most ``2
      max|v| max_j |ds_ij|``: averaged by ``p``, not summed over ``N``; the LSE moves by at most
      ``max_j |ds_ij|``. ``P`` and ``V`` rounded to ``pv_format`` add ``u max|v|`` each, partial sums
      stored in it ``u max|v|`` more. With unit-normal inputs the score term dominates: steps of
      ``max|x| / 127`` (about 3.5 / 127) against a float16 rounding of ``2^-11 |x|``: 30 to 60 times more.
    - Rule. ``naive_q`` is that arithmetic in NumPy: ``q`` and ``k`` quantised per block (round to
      nearest), the scores from the dequantised values in float64, the softmax with the row maximum
      subtracted, ``P``, ``V`` and ``P V`` rounded to ``pv_format``, the output to the dtype. ``sens_q`` is
      how far the exact result moves when every element of ``q`` and ``k`` moves by a random uniform
      amount within half its block's step and every element of ``v`` by ``u`` relative (the size of
      the quantisation error in the random-rounding model: a kernel that rounds half away from zero,
      smooths ``k`` by its mean or accumulates otherwise is held to what its arithmetic typically
      makes, not to the naive run's luck). It is the largest move over ``QUANTISED_DRAWS`` draws, not
      two: where a row's two largest scores are closer than the quantisation noise (large scores),
      which key wins is a coin the format tosses, and the output moves by up to ``|v_a - v_b|``; a
      kernel whose rounding is one more draw lands beyond all of them with probability at most
      ``1 / (QUANTISED_DRAWS + 1)``. A kernel conforms to the class if ``err(out) <=
      max(B16, NAIVE_FACTOR * err(naive_q) + FLOOR_EPS * eps(pv_format) * max|v| +
      SENSITIVITY_FACTOR * sens_q)``, ``B16`` the bound of :func:`tolerance_policy`: the 16-bit
      rule's factors, with the quantised arithmetic in place of the dtype's, and never tighter than
      the 16-bit bound. The LSE likewise, with ``max(1, max|lse|)`` for ``max|v|``.
    - Teeth. Dropping a block's scale, exponentiating without subtracting the row maximum (overflow
      at large scores), or one scale per tensor instead of per block (an outlier block multiplies
      every other block's step by its ratio to them) move the output by far more than three naive
      errors, and fail the class too.
    - Scope. The class widens the numerical comparisons of ``sdpa`` outputs (and of the operations
      defined as ``sdpa``: flash decode and merge, paged, context-parallel). Structural properties
      (exact zeros, patterns, rows unchanged by keys they do not see) keep their bounds: a causal
      kernel whose past rows move when future keys change leaks, whatever its format.

    .. versionadded:: 0.2.0
    """
