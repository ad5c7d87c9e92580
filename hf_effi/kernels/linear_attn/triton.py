"""Triton backend of the linear-attention ops: the same signatures as ``reference.py``, chunked kernels underneath.

Causal linear attention (a) and gated linear attention (c) share one chunked kernel family (``_triton_linear.py``):
(a) is (c) without decay. Normalisation rides along as one extra value column of ones, so the kernel that produces
q·S also produces q·z (the same trick fla's ``normalize_with_z_state`` uses); the division is left to autograd.
Padding is applied before the kernels by zeroing k, v and the log-decay of padded positions, which is exactly the
contract (a padded position neither decays nor adds to the state), and by zeroing padded output rows after.

Decode steps are inference-only kernels (``_triton_decode.py``); they refuse inputs that require grad rather than
silently cutting the graph.
"""

from __future__ import annotations

import torch
import triton

from . import _triton_functions as fn
from ._checks import check_causal_linear, check_chunk_size, check_gated, check_hybrid, check_step
from ._states import HybridAttentionState, LinearAttentionState
from ._triton_decode import hybrid_step_kernel, linear_step_kernel

__all__ = [
    "causal_linear_attention",
    "causal_linear_attention_step",
    "gated_linear_attention",
    "gated_linear_attention_step",
    "hybrid_window_attention",
    "hybrid_window_attention_step",
]

_MAX_DK = 256  # the [DK, BV] state and the [BT, BT, DK] decay tensor live in registers


def _check_triton_limits(chunk_size: int, *feature_dims: int, op: str) -> None:
    """What the kernels need beyond the shared contract checks (tile sizes and register budgets)."""
    check_chunk_size(chunk_size, op)
    if chunk_size < 16:
        raise ValueError(f"{op}: the triton kernels need chunk_size >= 16 (tl.dot tiles are at least 16 wide), "
                         f"got {chunk_size}")
    if max(feature_dims) > _MAX_DK:
        raise ValueError(f"{op}: the triton kernels take key/feature dims <= {_MAX_DK}, got {max(feature_dims)}; "
                         "use backend='chunk'")


def _check_no_grad(op: str, *tensors) -> None:
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op}: the triton decode steps are inference-only; call them under torch.no_grad() "
                           "or use backend='chunk' to differentiate through a step")


def _chunked_linear(q, k, v, g, scale, normalize, eps, initial_state, attention_mask, chunk_size):
    DV = v.shape[-1]
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    h0 = None
    if initial_state is not None:
        h0 = initial_state.kv.float()
        if normalize:
            h0 = torch.cat([h0, initial_state.k_sum.float().unsqueeze(-1)], dim=-1)
    pad = None
    if attention_mask is not None:
        pad = ~attention_mask.to(device=q.device, dtype=torch.bool)[:, None, :, None]
        k, v = k.masked_fill(pad, 0), v.masked_fill(pad, 0)
        g = g.masked_fill(pad, 0) if g is not None else None
    out_dtype = torch.float32 if normalize else v.dtype
    o, ht = fn.ChunkLinearFunction.apply(q, k, v, g, h0, scale, chunk_size, out_dtype)
    if normalize:
        o = o[..., :DV] / (o[..., DV:] + eps)
        state = LinearAttentionState(ht[..., :DV].contiguous(), ht[..., DV].contiguous())
    else:
        state = LinearAttentionState(ht, None)
    if pad is not None:
        o = o.masked_fill(pad, 0)
    return o, state


def causal_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    normalize: bool = True,
    eps: float = 1e-6,
    initial_state: LinearAttentionState | None = None,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Causal linear attention o_t = q_t S_t / (q_t·z_t + eps), chunked in Triton.

    q, k: ``[B, H, T, Dk]`` feature-mapped (non-negative when ``normalize``); v: ``[B, H, T, Dv]``;
    attention_mask: ``[B, T]`` (1 = real token). Returns o ``[B, H, T, Dv]`` (v's dtype) and the fp32 final state.
    """
    op = "causal_linear_attention"
    check_causal_linear(q, k, v, eps=eps, normalize=normalize, initial_state=initial_state,
                        attention_mask=attention_mask, op=op)
    _check_triton_limits(chunk_size, q.shape[-1], op=op)
    out_dtype = v.dtype
    o, state = _chunked_linear(q, k, v, None, 1.0, normalize, eps, initial_state, attention_mask, chunk_size)
    return o.to(out_dtype), state


def gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    scale: float = 1.0,
    normalize: bool = False,
    eps: float = 1e-6,
    initial_state: LinearAttentionState | None = None,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Gated linear attention (GLA, Yang et al., arXiv 2312.06635): S_t = diag(exp(g_t)) S_{t−1} + k_t v_tᵀ.

    q, k, log_decay: ``[B, H, T, Dk]`` (log_decay <= 0); v: ``[B, H, T, Dv]``; o_t = scale·q_t S_t, divided by
    scale·q_t·z_t + eps when ``normalize``. The default chunk is small because the decay kernel builds a
    [chunk, chunk, Dk] tensor of pairwise decays (the price of never overflowing).
    """
    op = "gated_linear_attention"
    check_gated(q, k, v, log_decay, eps=eps, normalize=normalize, initial_state=initial_state,
                attention_mask=attention_mask, op=op)
    _check_triton_limits(chunk_size, q.shape[-1], op=op)
    out_dtype = v.dtype
    o, state = _chunked_linear(q, k, v, log_decay, scale, normalize, eps, initial_state, attention_mask, chunk_size)
    return o.to(out_dtype), state


def _linear_step(q, k, v, g, state, scale, normalize, eps, op):
    check_step(q, op)
    _check_no_grad(op, q, k, v, g, *(state if state is not None else ()))
    _check_triton_limits(16, q.shape[-1], op=op)
    B, H, _, DK = q.shape
    DV = v.shape[-1]
    BK, BV = fn.block_size(DK), min(fn.block_size(DV), 64)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    kv = state.kv.float().contiguous() if state is not None else None
    ksum = state.k_sum.float().contiguous() if state is not None and normalize else None
    o = fn.empty(B, H, 1, DV, dtype=v.dtype, device=q.device)
    kv_out = fn.empty(B, H, DK, DV, dtype=torch.float32, device=q.device)
    ksum_out = fn.empty(B, H, DK, dtype=torch.float32, device=q.device) if normalize else None
    linear_step_kernel[(B * H, triton.cdiv(DV, BV))](
        q, k, v, g.contiguous() if g is not None else q, kv if kv is not None else kv_out,
        ksum if ksum is not None else kv_out, o, kv_out, ksum_out if ksum_out is not None else kv_out,
        DK, DV, float(scale), float(eps),
        HAS_DECAY=g is not None, HAS_STATE=state is not None, NORMALIZE=normalize, BK=BK, BV=BV,
    )
    return o, LinearAttentionState(kv_out, ksum_out)


def causal_linear_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: LinearAttentionState | None,
    *,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One decode token of ``causal_linear_attention``: q, k ``[B, H, 1, Dk]``, v ``[B, H, 1, Dv]``; state may be None."""
    op = "causal_linear_attention_step"
    check_causal_linear(q, k, v, eps=eps, normalize=normalize, initial_state=state, attention_mask=None, op=op)
    return _linear_step(q, k, v, None, state, 1.0, normalize, eps, op)


def gated_linear_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: LinearAttentionState | None,
    *,
    scale: float = 1.0,
    normalize: bool = False,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One decode token of ``gated_linear_attention``; log_decay ``[B, H, 1, Dk]``."""
    op = "gated_linear_attention_step"
    check_gated(q, k, v, log_decay, eps=eps, normalize=normalize, initial_state=state, attention_mask=None, op=op)
    return _linear_step(q, k, v, log_decay, state, scale, normalize, eps, op)


def _hybrid_window(state, q, v, fk, window):
    """The carried window buffers in the inputs' dtypes (zeros and all-False when there is no state)."""
    B, H, _, DQK = q.shape
    if state is None:
        return (q.new_zeros(B, H, window, DQK), fk.new_zeros(B, H, window, fk.shape[-1]),
                v.new_zeros(B, H, window, v.shape[-1]), torch.zeros(B, window, dtype=torch.bool, device=q.device))
    return (state.window_k.to(q.dtype), state.window_fk.to(fk.dtype), state.window_v.to(v.dtype),
            state.window_mask.to(torch.bool))


def hybrid_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fq: torch.Tensor,
    fk: torch.Tensor,
    window_weight: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    eps: float = 1e-6,
    initial_state: HybridAttentionState | None = None,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, HybridAttentionState]:
    """LoLCATs sliding-window + linear hybrid (Zhang et al., arXiv 2410.10254, Eq. 7), in Triton.

    q, k: ``[B, H, T, Dqk]`` (after rotary); v: ``[B, H, T, Dv]``; fq, fk: ``[B, H, T, F]`` feature-mapped;
    window_weight: ``[H]`` γ (already through sigmoid). Keys older than the window enter the linear half, which is
    the chunked linear kernel run on (fk, v) shifted right by ``window`` positions (the carried window slots shift
    in first), so both halves share one denominator without a new linear kernel.
    """
    op = "hybrid_window_attention"
    check_hybrid(q, k, v, fq, fk, window_weight, window=window, eps=eps, initial_state=initial_state,
                 attention_mask=attention_mask, op=op)
    _check_triton_limits(chunk_size, q.shape[-1], fq.shape[-1], op=op)
    B, H, T, DQK = q.shape
    DV = v.shape[-1]
    scale = DQK**-0.5 if scale is None else scale
    wk, wfk, wv, wm = _hybrid_window(initial_state, q, v, fk, window)
    real = (torch.ones(B, T, dtype=torch.bool, device=q.device) if attention_mask is None
            else attention_mask.to(device=q.device, dtype=torch.bool))
    real_all = torch.cat([wm, real], 1)
    pad_all = ~real_all[:, None, :, None]
    # Padded slots hold zeros (as the reference's window buffers do); the kernels skip them anyway.
    k_all, fk_all, v_all = (torch.cat([w, x], 2).masked_fill(pad_all, 0) for w, x in ((wk, k), (wfk, fk), (wv, v)))
    num, den = fn.WindowSoftmaxFunction.apply(q, k_all, v_all, real_all.float(), window, scale, chunk_size)
    # Linear half: query t sees key column c < t + 1 of the concatenation, i.e. every real token at or before t − window.
    fk_old = fk_all[:, :, :T]
    v_old = torch.cat([v_all[:, :, :T], torch.ones_like(v_all[:, :, :T, :1])], -1).masked_fill(pad_all[:, :, :T], 0)
    h0 = None
    if initial_state is not None:
        h0 = torch.cat([initial_state.kv.float(), initial_state.k_sum.float().unsqueeze(-1)], -1)
    lin, ht = fn.ChunkLinearFunction.apply(fq, fk_old, v_old, None, h0, 1.0, chunk_size, torch.float32)
    gamma = window_weight.float().view(1, H, 1)
    o = (gamma.unsqueeze(-1) * num + lin[..., :DV]) / (gamma * den + lin[..., DV] + eps).unsqueeze(-1)
    o = o.masked_fill(~real[:, None, :, None], 0).to(v.dtype)
    # Copies, not views: a view would keep the whole [B, H, T + W, D] concatenation alive inside a decode cache.
    state = HybridAttentionState(ht[..., :DV].contiguous(), ht[..., DV].contiguous(), k_all[:, :, T:].clone(),
                                 fk_all[:, :, T:].clone(), v_all[:, :, T:].clone(), real_all[:, T:].clone())
    return o, state


def hybrid_window_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fq: torch.Tensor,
    fk: torch.Tensor,
    window_weight: torch.Tensor,
    state: HybridAttentionState | None,
    *,
    window: int,
    scale: float | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, HybridAttentionState]:
    """One decode token of ``hybrid_window_attention``; the oldest window slot moves into kv/k_sum as it leaves."""
    op = "hybrid_window_attention_step"
    check_hybrid(q, k, v, fq, fk, window_weight, window=window, eps=eps, initial_state=state, attention_mask=None,
                 op=op)
    check_step(q, op)
    _check_no_grad(op, q, k, v, fq, fk, window_weight, *(state if state is not None else ()))
    _check_triton_limits(16, q.shape[-1], fq.shape[-1], op=op)
    B, H, _, DQK = q.shape
    F, DV = fq.shape[-1], v.shape[-1]
    scale = DQK**-0.5 if scale is None else scale
    wk, wfk, wv, wm = _hybrid_window(state, q, v, fk, window)
    if state is None:
        kv = torch.zeros(B, H, F, DV, dtype=torch.float32, device=q.device)
        ksum = torch.zeros(B, H, F, dtype=torch.float32, device=q.device)
    else:
        kv, ksum = state.kv.float().contiguous(), state.k_sum.float().contiguous()
    new_k, new_fk, new_v = (torch.cat([w[:, :, 1:], x], 2) for w, x in ((wk, k), (wfk, fk), (wv, v)))
    new_m = torch.cat([wm[:, 1:], torch.ones(B, 1, dtype=torch.bool, device=q.device)], 1)
    BV = min(fn.block_size(DV), 64)
    o = fn.empty(B, H, 1, DV, dtype=v.dtype, device=q.device)
    kv_out = fn.empty(B, H, F, DV, dtype=torch.float32, device=q.device)
    ksum_out = fn.empty(B, H, F, dtype=torch.float32, device=q.device)
    hybrid_step_kernel[(B * H, triton.cdiv(DV, BV))](
        q.contiguous(), fq.contiguous(), new_k.contiguous(), new_v.contiguous(), new_m.float().contiguous(),
        wfk[:, :, 0].contiguous(), wv[:, :, 0].contiguous(), wm[:, 0].float().contiguous(), kv, ksum,
        window_weight.float().contiguous(), o, kv_out, ksum_out, H, window, DQK, F, DV, float(scale), float(eps),
        BW=fn.block_size(window), BD=fn.block_size(DQK), BF=fn.block_size(F), BV=BV,
    )
    return o, HybridAttentionState(kv_out, ksum_out, new_k, new_fk, new_v, new_m)
