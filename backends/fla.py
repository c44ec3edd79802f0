"""``fla[:chunk|fused_chunk|simple_gla]``: flash-linear-attention's Triton kernels (``fla-core`` 0.6) under test.

The adapter calls fla's public ops as its layers call them, converting layouts and options where
the conversion is exact and declining (``Unsupported``, with the reason) where it is not:

- **Layout.** fla takes ``q, k, v`` as ``[B, T, H, K]``; the spec's ``(B, H, N, D)`` is transposed
  (a copy, no rounding). States are ``[B, H, K, V]`` in both, float32 (fla's kernels keep them so).
- **Scale.** fla multiplies ``q`` by ``scale`` inside the kernel, which is the spec's
  ``f_q = scale * phi(q)`` (``linear.parallel``) and ``scale * dot(q, k)`` (``retention.parallel``).
  Its default is ``K ** -0.5`` for both; the adapter always passes the spec's value (1 for linear
  attention, ``D_k ** -0.5`` for retention when ``None``).

Linear attention (``fla.ops.linear_attn``; clauses ``linear.recurrent``, ``linear.chunked``,
``linear.causal``, ``linear.feature_map``, ``linear.normalizer``, ``linear.state``):

- fla's ops are causal only: ``causal=False`` is declined. fla has no parallel (quadratic) form:
  ``form="parallel"`` is declined (``linear.parallel`` is not declared).
- ``form="recurrent"``: ``fused_recurrent_linear_attn``. ``form="chunked"``:
  ``chunk_linear_attn`` (variants ``chunk`` and ``simple_gla``) or ``fused_chunk_linear_attn``
  (``fused_chunk``); their chunk is fixed (64 for ``chunk``; ``min(64, max(16, next_pow2(N)))`` for
  ``fused_chunk``), so only that ``chunk_size`` maps; any other is declined.
- Feature maps are applied before the call, as fla's ``LinearAttention`` layer applies them:
  ``elu+1`` by fla's own ``fla.modules.activations.elu_p1`` (a Triton kernel, ``exp(x)`` below 0),
  ``relu`` by ``torch.relu``, ``identity`` not at all; the features have the input dtype.
- Normalisation: fla's ``normalize=True`` divides by ``dot(scale q_t, z_t) + 1e-10`` with
  ``z_t = z0 + sum_{s <= t} k_s``: the spec's rule with ``eps = 1e-10``. ``eps = 1e-10`` maps
  exactly; ``eps = 0`` is passed through and judged by the tolerance (the spec's
  ``linear.normalizer`` says such a kernel conforms only where ``1e-10 / den`` is within it); any
  other ``eps`` is declined.
- State: fla 0.6 carries ``(S, z)`` when normalising (``initial_state=(S0, z0)``, ``z`` as
  ``[B, 1, H, K]``), and ``S`` alone otherwise. Unnormalised, the final ``z`` the spec returns is
  not fla's: the adapter sums the key features (and ``z0``) in float32 itself; ``out`` and ``S`` are
  fla's in every case.

Retention (``fla.ops.retention``; clauses ``retention.parallel``, ``.recurrent``, ``.chunkwise``,
``.state``, ``.multiscale``):

- fla fixes the decays: head ``h`` of a call decays by ``gamma_h = 1 - 2^(-5 - h)``, built in
  float32 and passed to the kernels as its log (``g_gamma``). Variants ``chunk`` and
  ``fused_chunk`` run fla's retention functions and take only those decays: a case whose float32
  ``gammas`` differ from fla's for its ``H`` heads is declined. ``retention_decays`` returns the
  decays fla builds (float32; heads from 20 on round to 1.0, as the spec notes).
- Variant ``simple_gla`` runs the kernels those functions wrap (``chunk_simple_gla``,
  ``fused_recurrent_simple_gla``, ``parallel_simple_gla``) with ``g_gamma = log(gammas)`` (computed
  in float64, rounded to float32: fla's own parametrisation, for any decay). This conversion is not
  exact: the kernels see ``exp(float32(log gamma))``; ``gamma = 0`` (``log = -inf``) is declined.
- ``form="parallel"``: ``parallel_retention`` (no state in or out: ``initial_state`` and
  ``return_state`` are declined). ``"recurrent"``: ``fused_recurrent_retention``. ``"chunkwise"``:
  ``chunk_retention(chunk_size=C)`` for ``C`` a power of two (fla's requirement; others are
  declined), or ``fused_chunk_retention`` (variant ``fused_chunk``, its own chunk only).

Not declared: ``linear.parallel``, ``linear.efficient``, ``performer.*`` (fla has no such op); the
cost clauses on the CPU (the interpreter's NumPy allocations have no counter here).

On the CPU (``--device=cpu``) the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` set
before Triton is imported; the name in reports gains ``:interpreter``), with :func:`interpret_third_party`
applied: two interpreter-only patches, documented there. Needs ``pip install attnspec[fla]``
(``fla-core`` and ``einops``); without it the backend is not loaded and says why.
"""

from __future__ import annotations

import ast
import contextlib
import math
import os

import numpy as np
import torch

from attnspec.backends import _torch_arrays as arrays
from attnspec.backends._torch_autograd import autograd
from attnspec.backends._triton_mode import select_mode
from attnspec.backends.torch_tiled import linear as torch_linear
from attnspec.contract import Backend, BackendError, Unsupported
from attnspec.reference import retention as reference_retention

VARIANTS = ("chunk", "fused_chunk", "simple_gla")
#: fla's denominator offset in ``normalize_with_z_state`` (``fla/ops/linear_attn/utils.py``).
FLA_EPS = 1e-10
#: ``chunk_linear_attn``'s chunk (``chunk_simple_gla``'s default).
CHUNK = 64


_PATCHED: set[str] = set()


def interpret_third_party(prefix: str) -> None:
    """Let a third-party package's Triton kernels (modules under ``prefix``) run in the interpreter.

    Interpreter mode only (``TRITON_INTERPRET=1``); nothing is patched on a GPU. Two patches:

    1. ``triton.autotune``: the autotuner times every config on the GPU driver, which the CPU does
       not have. Interpreting, it keeps the first config its pruning leaves and times nothing
       (the kernel then runs once, with that config). Numerics on the GPU may differ by config
       (tile widths change summation orders), so a CPU pass is not a GPU pass.
    2. Loop variables: compiled Triton makes ``i`` of ``for i in range(n)`` a tensor (``i.to(tl.int64)``
       works); the interpreter hands out Python ints. In kernels of modules under ``prefix`` only,
       each such loop's variable is converted with the interpreter's own ``to_tensor`` at the top
       of the body (``tl.static_range`` loops keep their ints).
    """
    if os.environ.get("TRITON_INTERPRET") != "1" or prefix in _PATCHED:
        return
    import triton.runtime.autotuner as autotuner
    import triton.runtime.interpreter as interpreter

    if not _PATCHED:
        prune = autotuner.Autotuner.prune_configs

        def first_config(self, kwargs, _prune=prune):
            return _prune(self, kwargs)[:1]

        def untimed(self, *args, config, **meta):
            return [0.0, 0.0, 0.0]

        autotuner.Autotuner.prune_configs = first_config
        autotuner.Autotuner._bench = untimed

        transform = interpreter.FunctionRewriter._transform_ast

        def loop_tensors(self, src, _transform=transform):
            tree = _transform(self, src)
            module = getattr(self.fn, "__module__", "") or ""
            if any(module == p or module.startswith(p + ".") for p in _PATCHED):
                tree = ast.fix_missing_locations(_LoopVariables().visit(tree))
            return tree

        interpreter.FunctionRewriter._transform_ast = loop_tensors
    _PATCHED.add(prefix)


class _LoopVariables(ast.NodeTransformer):
    """``for i in range(...)`` / ``tl.range(...)``: ``i = interpreter_semantic.to_tensor(i, False)`` first."""

    def visit_For(self, node):
        self.generic_visit(node)
        call = node.iter
        func = call.func if isinstance(call, ast.Call) else None
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name == "range" and isinstance(node.target, ast.Name):
            var = node.target.id
            convert = ast.Call(
                func=ast.Attribute(
                    value=ast.Name(id="interpreter_semantic", ctx=ast.Load()), attr="to_tensor", ctx=ast.Load()
                ),
                args=[ast.Name(id=var, ctx=ast.Load()), ast.Constant(value=False)],
                keywords=[],
            )
            node.body.insert(0, ast.Assign(targets=[ast.Name(id=var, ctx=ast.Store())], value=convert))
        return node


@contextlib.contextmanager
def refusals_declined():
    """fla's kernels assert what they require of their inputs ("chunk_bwd_dv requires even K and V
    for torch.float16"): such a refusal declines the case; any other error stays an error."""
    try:
        yield
    except AssertionError as exc:
        if " requires " not in str(exc):
            raise
        raise Unsupported(f"fla refuses the case: {exc}") from None


def _ops():
    try:
        from fla.modules.activations import elu_p1
        from fla.ops import linear_attn, retention, simple_gla
    except ImportError as exc:
        raise BackendError(
            f"the fla backend needs flash-linear-attention's kernels: pip install 'attnspec[fla]' ({exc})"
        ) from None
    return linear_attn, retention, simple_gla, elu_p1


def fla_decays(num_heads: int) -> torch.Tensor:
    """The decays fla's retention functions build for ``num_heads`` heads (float32, before the log)."""
    return 1 - 2.0 ** (-5.0 - torch.arange(num_heads, dtype=torch.float))


def _bthk(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous()


#: The names this module registers as built-in backends (read by attnspec.registry).
BACKENDS = {"fla": "FlaBackend"}


class FlaBackend(Backend):
    name = "fla"
    clauses: tuple[str, ...] = (
        "linear.recurrent",
        "linear.chunked",
        "linear.causal",
        "linear.feature_map",
        "linear.normalizer",
        "linear.state",
        "retention.parallel",
        "retention.recurrent",
        "retention.chunkwise",
        "retention.state",
        "retention.multiscale",
        "linear.grad",
        "retention.grad",
    )
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    devices = ("cuda", "cpu")
    max_head_dim = 256
    default_variant = "chunk"

    def __init__(self, device: str | None = None, variant: str | None = None):
        super().__init__(arrays.default_device(device))
        if variant not in (None, *VARIANTS):
            raise BackendError(f"fla backend variant must be one of {VARIANTS}; got {variant!r}")
        self.variant = variant or self.default_variant
        interpret = not self.device.startswith("cuda")
        select_mode(interpret, "fla")
        self.linear_ops, self.retention_ops, self.simple_gla, self.elu_p1 = _ops()
        interpret_third_party("fla")
        self.name = f"fla:{self.variant}" + (":interpreter" if interpret else "")
        if interpret:  # the interpreter pays NumPy calls per tile: shorter sequences
            self.max_seq_len, self.max_head_dim = 96, 32
            # Triton 3.6's interpreter keeps bfloat16 as raw uint16 bits and its tl.dot multiplies
            # those bits (create_dot converts only 8-bit floats); parallel kernels also hit a missing
            # get_bf16 in its builder. bfloat16 is a GPU-only dtype here.
            self.dtypes = ("float32", "float16")
        else:
            self.clauses = (*self.clauses, "linear.cost", "retention.cost")
        from importlib.metadata import PackageNotFoundError, version

        try:
            self.version = version("fla-core")
        except PackageNotFoundError:
            self.version = "unknown"

    def to_native(self, array):
        return arrays.to_torch(array, self.device)

    def to_numpy(self, value):
        return arrays.to_numpy(value)

    def peak_memory(self, fn):
        return arrays.peak_memory(fn, self.device)

    # --- linear attention ---------------------------------------------------------------------------

    def _phi(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if name == "elu+1":
            return self.elu_p1(x)
        return torch.relu(x) if name == "relu" else x

    def _linear_chunk(self, n: int) -> int:
        return min(64, max(16, 1 << max(n - 1, 0).bit_length())) if self.variant == "fused_chunk" else CHUNK

    def linear_attention(
        self,
        q,
        k,
        v,
        *,
        feature_map="elu+1",
        causal=False,
        form="parallel",
        chunk_size=None,
        normalize=True,
        scale=1.0,
        eps=0.0,
        initial_state=None,
        initial_normalizer=None,
        output_final_state=False,
    ):
        torch_linear.check_arguments(  # the reference's checks and errors (a wrong call is an error, not a decline)
            q,
            k,
            v,
            feature_map=feature_map,
            causal=causal,
            form=form,
            chunk_size=chunk_size,
            normalize=normalize,
            scale=scale,
            eps=eps,
            initial_state=initial_state,
            initial_normalizer=initial_normalizer,
            output_final_state=output_final_state,
        )
        if not causal:
            raise Unsupported("causal=False: fla's linear attention ops are causal only")
        if form == "parallel":
            raise Unsupported("form='parallel': fla has no quadratic linear-attention op")
        n = q.shape[2]
        if form == "chunked" and chunk_size != self._linear_chunk(n):
            raise Unsupported(
                f"chunk_size={chunk_size}: fla's {self.variant} op fixes its chunk at {self._linear_chunk(n)} for N = {n}"
            )
        if normalize and eps not in (0.0, FLA_EPS):
            raise Unsupported(f"eps={eps}: fla's denominator adds a fixed {FLA_EPS:g}")
        fq, fk = self._phi(q, feature_map), self._phi(k, feature_map)
        s0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
        z0 = None if initial_normalizer is None else initial_normalizer.to(torch.float32)
        if normalize:
            state = None if s0 is None and z0 is None else (s0, None if z0 is None else z0[:, None].contiguous())
        else:
            state = s0
        if form == "recurrent":
            op = self.linear_ops.fused_recurrent_linear_attn
        else:
            op = (
                self.linear_ops.fused_chunk_linear_attn
                if self.variant == "fused_chunk"
                else self.linear_ops.chunk_linear_attn
            )
        out, final = op(
            _bthk(fq),
            _bthk(fk),
            _bthk(v),
            scale=float(scale),
            initial_state=state,
            output_final_state=bool(output_final_state),
            normalize=bool(normalize),
        )
        out = out.transpose(1, 2)
        if not output_final_state:
            return out
        if normalize:
            s, z = final[0], final[1][:, 0]
        else:  # fla carries no normaliser unnormalised: the spec's z, summed here (not fla's)
            s = final
            z = fk.to(torch.float32).sum(dim=2) + (0 if z0 is None else z0)
        return out, s, z

    def linear_attention_backward(self, q, k, v, dout, *, initial_state=None, initial_normalizer=None, **options):
        """Clause ``linear.grad``: fla's own backward kernels, through autograd as its layers train."""
        inputs = dict(q=q, k=k, v=v, initial_state=initial_state, initial_normalizer=initial_normalizer)
        with refusals_declined():
            return autograd(self.linear_attention, inputs, dout, **options)

    # --- retention ----------------------------------------------------------------------------------

    def retention_decays(self, num_heads):
        return fla_decays(num_heads)

    def retention(
        self, q, k, v, *, gammas, form="parallel", chunk_size=None, scale=None, initial_state=None, return_state=False
    ):
        stand = [arrays.stand_in(arrays.tensor(name, x)) for name, x in (("q", q), ("k", k), ("v", v))]
        host_gammas = arrays.to_numpy(gammas) if torch.is_tensor(gammas) else np.asarray(gammas)
        reference_retention.retention(  # the reference's checks and errors, on zero-size stand-ins
            *(x[:, :, :0] for x in stand),
            gammas=host_gammas,
            form=form,
            chunk_size=chunk_size,
            scale=scale,
            initial_state=None if initial_state is None else arrays.stand_in(initial_state),
            return_state=return_state,
        )
        b, h, n, d_k = q.shape
        scale = 1.0 / math.sqrt(d_k) if scale is None else float(scale)
        g32 = host_gammas.astype(np.float32)
        if self.variant == "simple_gla":
            if (g32 == 0).any():
                raise Unsupported("a decay of 0: fla's log-decay g_gamma = log(0) = -inf")
            g_gamma = torch.from_numpy(np.log(host_gammas.astype(np.float64)).astype(np.float32)).to(q.device)
        else:
            own = fla_decays(h).numpy()
            if not np.array_equal(g32, own):
                raise Unsupported(
                    f"gammas {g32.tolist()}: fla's retention ops fix gammas[h] = 1 - 2^(-5 - h) = {own.tolist()} "
                    "(fla:simple_gla takes any decay)"
                )
            g_gamma = None
        h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
        qt, kt, vt = _bthk(q), _bthk(k), _bthk(v)
        if form == "parallel":
            if h0 is not None or return_state:
                raise Unsupported("form='parallel': parallel_retention takes no initial state and returns none")
            if g_gamma is None:
                out, _ = self.retention_ops.parallel_retention(qt, kt, vt, scale=scale)
            else:
                g = g_gamma[None, None, :].expand(b, n, h)
                out, _ = self.simple_gla.parallel_simple_gla(q=qt, k=kt, v=vt, g=g, scale=scale)
            return out.transpose(1, 2)
        options = dict(scale=scale, initial_state=h0, output_final_state=bool(return_state))
        if form == "recurrent":
            if g_gamma is None:
                out, final = self.retention_ops.fused_recurrent_retention(qt, kt, vt, **options)
            else:
                out, final = self.simple_gla.fused_recurrent_simple_gla(q=qt, k=kt, v=vt, g_gamma=g_gamma, **options)
        elif self.variant == "fused_chunk":
            own_chunk = min(64, max(16, 1 << max(n - 1, 0).bit_length()))
            if chunk_size != own_chunk:
                raise Unsupported(f"chunk_size={chunk_size}: fused_chunk_retention fixes its chunk at {own_chunk} here")
            out, final = self.retention_ops.fused_chunk_retention(qt, kt, vt, **options)
        else:
            if chunk_size & (chunk_size - 1):
                raise Unsupported(f"chunk_size={chunk_size}: fla's chunked kernels take powers of two")
            if g_gamma is None:
                out, final = self.retention_ops.chunk_retention(qt, kt, vt, chunk_size=chunk_size, **options)
            else:
                out, final = self.simple_gla.chunk_simple_gla(
                    q=qt, k=kt, v=vt, g_gamma=g_gamma, chunk_size=chunk_size, **options
                )
        out = out.transpose(1, 2)
        return (out, final) if return_state else out

    def retention_backward(self, q, k, v, dout, *, initial_state=None, **options):
        """Clause ``retention.grad``: fla's own backward kernels, through autograd as its layers train."""
        with refusals_declined():
            return autograd(self.retention, dict(q=q, k=k, v=v, initial_state=initial_state), dout, **options)
