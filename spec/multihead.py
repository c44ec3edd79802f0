"""Multi-head attention with input and output projections."""

from attnspec.clauses import clause, operations

operations(mha="mha(x_q, x_kv, *, w_q, w_k, w_v, w_o, num_heads, num_kv_heads, **sdpa_options) -> out")


@clause("mha", op="mha")
def mha(x_q, x_kv, *, w_q, w_k, w_v, w_o, num_heads, num_kv_heads=None, **sdpa_options):
    """Multi-head attention: project, split heads, attend, merge heads, project back.

    ``x_q`` is ``(B, N_q, d_model)`` and ``x_kv`` is ``(B, N_k, d_model)`` (the same array for
    self-attention). With ``H = num_heads`` and ``H_kv = num_kv_heads`` (default ``H``),
    ``w_q`` is ``(d_model, H * D_qk)``, ``w_k`` is ``(d_model, H_kv * D_qk)``, ``w_v`` is
    ``(d_model, H_kv * D_v)`` and ``w_o`` is ``(H * D_v, d_model)``. Projections act on the right
    (``x @ w``), and a projected feature axis splits head-major: column ``h * D + d`` is
    channel ``d`` of head ``h``. Then::

        q = split_heads(x_q @ w_q, H)        # (B, H, N_q, D_qk)
        k = split_heads(x_kv @ w_k, H_kv)    # (B, H_kv, N_k, D_qk)
        v = split_heads(x_kv @ w_v, H_kv)    # (B, H_kv, N_k, D_v)
        o = sdpa(q, k, v, **sdpa_options)    # every option of ``sdpa`` applies
        out = merge_heads(o) @ w_o           # (B, N_q, d_model)

    ``merge_heads`` is the inverse of ``split_heads``. The result is ``(B, N_q, d_model)``.

    .. versionadded:: 0.1.0
    """
