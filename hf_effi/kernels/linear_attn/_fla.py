"""Optional comparison backend: flash-linear-attention's chunk kernels behind our signatures (CUDA only).

For benchmarks only, never chosen implicitly. fla (``pip install fla-core``; tested API: 0.6.0) has the same op
for unnormalised causal linear attention (``chunk_linear_attn``) and for GLA (``chunk_gla``); its normaliser
has no eps and it takes no padding mask, so those arguments are refused rather than silently ignored. fla's
layout is ``[B, T, H, D]``: the inputs are transposed on the way in and out (views; fla copies as it needs).
"""

from __future__ import annotations

import importlib

import torch

from ._states import LinearAttentionState

__all__ = ["causal_linear_attention", "gated_linear_attention"]


def _fla_op(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise ImportError(f"backend='fla' needs flash-linear-attention: pip install fla-core ({err})") from err


def _refuse(op: str, normalize: bool, attention_mask: torch.Tensor | None, q: torch.Tensor) -> None:
    if not q.is_cuda:
        raise ValueError(f"{op}: backend='fla' runs on CUDA tensors only, got {q.device}; use backend='chunk' on CPU")
    if normalize:
        raise ValueError(f"{op}: backend='fla' compares normalize=False only (fla's normaliser has no eps); pass "
                         "normalize=False or use backend='triton'")
    if attention_mask is not None:
        raise ValueError(f"{op}: backend='fla' takes no attention_mask; drop the mask or use backend='triton'")


def _seq_first(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def causal_linear_attention(q, k, v, *, normalize=True, eps=1e-6, initial_state=None, attention_mask=None):
    """fla ``chunk_linear_attn(normalize=False, scale=1)`` with our layout and state type."""
    _refuse("causal_linear_attention", normalize, attention_mask, q)
    chunk_linear_attn = _fla_op("fla.ops.linear_attn", "chunk_linear_attn")
    h0 = None if initial_state is None else initial_state.kv.float()
    o, ht = chunk_linear_attn(_seq_first(q), _seq_first(k), _seq_first(v), scale=1.0, initial_state=h0,
                              output_final_state=True, normalize=False)
    return _seq_first(o).to(v.dtype), LinearAttentionState(ht.float(), None)


def gated_linear_attention(q, k, v, log_decay, *, scale=1.0, normalize=False, eps=1e-6, initial_state=None,
                           attention_mask=None):
    """fla ``chunk_gla`` with our layout and state type."""
    _refuse("gated_linear_attention", normalize, attention_mask, q)
    chunk_gla = _fla_op("fla.ops.gla", "chunk_gla")
    h0 = None if initial_state is None else initial_state.kv.float()
    o, ht = chunk_gla(_seq_first(q), _seq_first(k), _seq_first(v), _seq_first(log_decay), scale=scale,
                      initial_state=h0, output_final_state=True)
    return _seq_first(o).to(v.dtype), LinearAttentionState(ht.float(), None)
