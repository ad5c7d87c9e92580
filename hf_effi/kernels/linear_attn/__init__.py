"""Linear-attention ops in HF's ``[B, H, T, D]`` layout, dispatched on the input's device.

Ops (each returns ``(output, final_state)``; see ``reference.py`` for the exact formulas):
``causal_linear_attention``, ``hybrid_window_attention`` (LoLCATs), ``gated_linear_attention`` (GLA),
``noncausal_linear_attention``, ``sliding_window_attention``, and the one-token decode ``*_step`` functions.

Backends: ``"reference"`` (quadratic, the truth), ``"chunk"`` (chunked PyTorch), ``"triton"`` (CUDA; (a)-(c)
and their steps), ``"fla"`` (CUDA, comparison only, unnormalised (a) and (c)). With ``backend=None`` the choice
is Triton for CUDA inputs where a Triton op exists, chunked PyTorch otherwise; a decode step that must be
differentiated uses the PyTorch step (the Triton steps are inference-only). The Triton interpreter is never
chosen implicitly: ``backend="triton"`` on CPU needs ``TRITON_INTERPRET=1`` set before import. The environment
variable ``HF_EFFI_LINEAR_ATTN_BACKEND`` sets a preferred backend; unlike ``backend=``, it falls back to the
device default for ops the preferred backend lacks or cannot run on the input's device. Triton is imported only when the Triton backend is used.
"""

from __future__ import annotations

import difflib
import importlib
import os
from typing import Any

import torch

from ._states import HybridAttentionState, LinearAttentionState, WindowState

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "HybridAttentionState",
    "LinearAttentionState",
    "WindowState",
    "causal_linear_attention",
    "causal_linear_attention_step",
    "gated_linear_attention",
    "gated_linear_attention_step",
    "hybrid_window_attention",
    "hybrid_window_attention_step",
    "noncausal_linear_attention",
    "resolve_backend",
    "sliding_window_attention",
    "sliding_window_attention_step",
]

BACKENDS = ("reference", "chunk", "triton", "fla")
ENV_VAR = "HF_EFFI_LINEAR_ATTN_BACKEND"
_MODULES = {"reference": ".reference", "chunk": ".chunk", "triton": ".triton", "fla": "._fla"}
_ALL_OPS = frozenset({
    "causal_linear_attention", "hybrid_window_attention", "gated_linear_attention", "noncausal_linear_attention",
    "sliding_window_attention", "causal_linear_attention_step", "hybrid_window_attention_step",
    "gated_linear_attention_step", "sliding_window_attention_step",
})
_OPS = {
    "reference": _ALL_OPS,
    "chunk": _ALL_OPS,
    "triton": frozenset({
        "causal_linear_attention", "hybrid_window_attention", "gated_linear_attention",
        "causal_linear_attention_step", "hybrid_window_attention_step", "gated_linear_attention_step",
    }),
    "fla": frozenset({"causal_linear_attention", "gated_linear_attention"}),
}


def _check_name(name: Any, source: str) -> str:
    if name not in BACKENDS:
        close = difflib.get_close_matches(str(name), BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{source}={name!r} is not a linear-attention backend{hint}; choose one of {BACKENDS}")
    return name


def resolve_backend(op: str, x: torch.Tensor, backend: str | None = None, *, needs_grad: bool = False) -> str:
    """The backend name ``op`` runs on for input ``x``: explicit ``backend`` > env preference > device default."""
    if backend is not None:
        name = _check_name(backend, "backend")
        if op not in _OPS[name]:
            have = sorted(b for b in BACKENDS if op in _OPS[b])
            raise ValueError(f"backend={name!r} has no {op}; backends with it: {have}")
        if not _runs_on(name, x):
            raise ValueError(f"{op}: backend={name!r} needs CUDA tensors, got {x.device}; use backend='chunk' on "
                             "CPU (or, for triton tests only, set TRITON_INTERPRET=1 before importing)")
        return name
    env = os.environ.get(ENV_VAR) or None
    if env is not None:
        name = _check_name(env, ENV_VAR)
        if op in _OPS[name] and _runs_on(name, x):
            return name
    return "triton" if x.is_cuda and op in _OPS["triton"] and not needs_grad else "chunk"


def _runs_on(name: str, x: torch.Tensor) -> bool:
    """CUDA backends need CUDA tensors; triton on CPU only when the user has set TRITON_INTERPRET=1 themselves."""
    if name == "fla":
        return x.is_cuda
    if name == "triton":
        return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return True


def _implementation(op: str, x: torch.Tensor, backend: str | None, needs_grad: bool = False):
    name = resolve_backend(op, x, backend, needs_grad=needs_grad)
    return getattr(importlib.import_module(_MODULES[name], __name__), op)


_SINK_BACKENDS = ("reference", "chunk")


def _hybrid_implementation(op: str, x: torch.Tensor, backend: str | None, sinks: int, needs_grad: bool = False):
    """The hybrid op and its extra keyword arguments. Attention sinks exist in the reference and chunk backends
    only: with ``sinks`` > 0 an automatic choice of triton/fla falls back to chunk; an explicit one is refused."""
    if not sinks:
        return _implementation(op, x, backend, needs_grad), {}
    name = resolve_backend(op, x, backend, needs_grad=needs_grad)
    if name not in _SINK_BACKENDS:
        if backend is not None:
            raise ValueError(f"{op}: backend={name!r} has no attention sinks (sinks={sinks}); use one of "
                             f"{_SINK_BACKENDS} or sinks=0")
        name = "chunk"
    return getattr(importlib.import_module(_MODULES[name], __name__), op), {"sinks": sinks}


def _step_needs_grad(*tensors: Any) -> bool:
    flat = [t for x in tensors for t in (x if isinstance(x, tuple) else (x,)) if isinstance(t, torch.Tensor)]
    return torch.is_grad_enabled() and any(t.requires_grad for t in flat)


def causal_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, normalize: bool = True, eps: float = 1e-6,
    initial_state: LinearAttentionState | None = None, attention_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Causal linear attention o_t = q_t S_t / (q_t·z_t + eps). q, k ``[B,H,T,Dk]`` feature-mapped; v ``[B,H,T,Dv]``."""
    fn = _implementation("causal_linear_attention", q, backend)
    return fn(q, k, v, normalize=normalize, eps=eps, initial_state=initial_state, attention_mask=attention_mask)


def noncausal_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, normalize: bool = True, eps: float = 1e-6,
    initial_state: LinearAttentionState | None = None, attention_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Encoder linear attention: every query sees every real key. Shapes as ``causal_linear_attention``."""
    fn = _implementation("noncausal_linear_attention", q, backend)
    return fn(q, k, v, normalize=normalize, eps=eps, initial_state=initial_state, attention_mask=attention_mask)


def gated_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, *, scale: float = 1.0,
    normalize: bool = False, eps: float = 1e-6, initial_state: LinearAttentionState | None = None,
    attention_mask: torch.Tensor | None = None, backend: str | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """GLA (arXiv 2312.06635): S_t = diag(exp(g_t)) S_{t−1} + k_t v_tᵀ, o_t = scale·q_t S_t. log_decay ``[B,H,T,Dk]``."""
    fn = _implementation("gated_linear_attention", q, backend)
    return fn(q, k, v, log_decay, scale=scale, normalize=normalize, eps=eps, initial_state=initial_state,
              attention_mask=attention_mask)


def hybrid_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fq: torch.Tensor, fk: torch.Tensor,
    window_weight: torch.Tensor, *, window: int, scale: float | None = None, eps: float = 1e-6,
    initial_state: HybridAttentionState | None = None, attention_mask: torch.Tensor | None = None,
    backend: str | None = None, sinks: int = 0,
) -> tuple[torch.Tensor, HybridAttentionState]:
    """LoLCATs hybrid (arXiv 2410.10254, Eq. 7): softmax over the last ``window`` tokens + linear beyond, one
    normaliser. q, k ``[B,H,T,Dqk]``; fq, fk ``[B,H,T,F]``; v ``[B,H,T,Dv]``; window_weight ``[H]`` (after sigmoid).
    ``sinks``: the first real tokens of the stream stay in the softmax part after leaving the window (``_sinks``)."""
    fn, extra = _hybrid_implementation("hybrid_window_attention", q, backend, sinks)
    return fn(q, k, v, fq, fk, window_weight, window=window, scale=scale, eps=eps, initial_state=initial_state,
              attention_mask=attention_mask, **extra)


def sliding_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, scale: float | None = None,
    initial_state: WindowState | None = None, attention_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, WindowState]:
    """Causal softmax over the last ``window`` positions. q, k ``[B,H,T,D]``; v ``[B,H,T,Dv]``."""
    fn = _implementation("sliding_window_attention", q, backend)
    return fn(q, k, v, window=window, scale=scale, initial_state=initial_state, attention_mask=attention_mask)


def causal_linear_attention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearAttentionState | None, *,
    normalize: bool = True, eps: float = 1e-6, backend: str | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One decode token (T = 1) of causal linear attention; ``state=None`` is an empty history."""
    fn = _implementation("causal_linear_attention_step", q, backend, _step_needs_grad(q, k, v, state))
    return fn(q, k, v, state, normalize=normalize, eps=eps)


def gated_linear_attention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, state: LinearAttentionState | None,
    *, scale: float = 1.0, normalize: bool = False, eps: float = 1e-6, backend: str | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One decode token (T = 1) of GLA."""
    fn = _implementation("gated_linear_attention_step", q, backend, _step_needs_grad(q, k, v, log_decay, state))
    return fn(q, k, v, log_decay, state, scale=scale, normalize=normalize, eps=eps)


def hybrid_window_attention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fq: torch.Tensor, fk: torch.Tensor,
    window_weight: torch.Tensor, state: HybridAttentionState | None, *, window: int, scale: float | None = None,
    eps: float = 1e-6, backend: str | None = None, sinks: int = 0,
) -> tuple[torch.Tensor, HybridAttentionState]:
    """One decode token (T = 1) of the LoLCATs hybrid; the token leaving the window joins the linear sums (or its
    sink slot, for one of the first ``sinks`` real tokens)."""
    needs_grad = _step_needs_grad(q, k, v, fq, fk, window_weight, state)
    fn, extra = _hybrid_implementation("hybrid_window_attention_step", q, backend, sinks, needs_grad)
    return fn(q, k, v, fq, fk, window_weight, state, window=window, scale=scale, eps=eps, **extra)


def sliding_window_attention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WindowState | None, *, window: int,
    scale: float | None = None, backend: str | None = None,
) -> tuple[torch.Tensor, WindowState]:
    """One decode token (T = 1) of sliding-window softmax."""
    fn = _implementation("sliding_window_attention_step", q, backend)
    return fn(q, k, v, state, window=window, scale=scale)
