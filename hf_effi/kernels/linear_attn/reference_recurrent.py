"""Token-by-token references: the decode steps and the ``<op>_recurrent`` forms built from them.

A step takes one token (``[B, H, 1, D]``) and the state, and returns (o, new_state). The recurrent forms loop
the same step over a sequence, so the quadratic references in ``reference.py`` are checked against a second,
independent derivation. A padded position (``attention_mask`` 0) keeps the linear sums unchanged and, for the
window ops, still occupies its window slot (windows are by position) with its mask bit False.

The steps are also the fast decode path on CPU: one token costs O(F·Dv + W·D), independent of T.
"""

from __future__ import annotations

import torch

from ._checks import check_causal_linear, check_gated, check_hybrid, check_sliding_window, check_step, real_positions
from ._states import (
    HybridAttentionState,
    LinearAttentionState,
    WindowState,
    accumulate_dtype,
    empty_hybrid_state,
    empty_window_state,
)

__all__ = [
    "causal_linear_attention_recurrent",
    "causal_linear_attention_step",
    "gated_linear_attention_recurrent",
    "gated_linear_attention_step",
    "hybrid_window_attention_recurrent",
    "hybrid_window_attention_step",
    "sliding_window_attention_recurrent",
    "sliding_window_attention_step",
]


def _keep_where(real: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per batch row: the updated tensor for real tokens, the old one for padding."""
    if real is None:
        return new
    return torch.where(real.view(-1, *([1] * (new.dim() - 1))), new, old)


def _linear_step(q, k, v, log_decay, state, real, scale, normalize, eps):
    B, H, _, Dk = q.shape
    Dv = v.shape[-1]
    acc = accumulate_dtype(q, k, v, *(() if log_decay is None else (log_decay,)))
    qt, kt, vt = q[:, :, 0].to(acc), k[:, :, 0].to(acc), v[:, :, 0].to(acc)
    if state is None:
        kv_old, z_old = torch.zeros(B, H, Dk, Dv, dtype=acc, device=q.device), torch.zeros(B, H, Dk, dtype=acc,
                                                                                           device=q.device)
    else:
        kv_old = state.kv.to(acc)
        z_old = state.k_sum.to(acc) if state.k_sum is not None else torch.zeros(B, H, Dk, dtype=acc, device=q.device)
    kv, z = kv_old, z_old
    if log_decay is not None:
        decay = log_decay[:, :, 0].to(acc).exp()  # GLA Eq. 2: S_t = diag(α_t) S_{t-1} + k_t v_tᵀ
        kv, z = decay.unsqueeze(-1) * kv, decay * z
    kv = kv + kt.unsqueeze(-1) * vt.unsqueeze(-2)
    z = z + kt
    kv, z = _keep_where(real, kv, kv_old), _keep_where(real, z, z_old)
    o = scale * torch.einsum("bhd,bhdv->bhv", qt, kv)
    if normalize:
        o = o / (scale * (qt * z).sum(-1, keepdim=True) + eps)
    if real is not None:
        o = _keep_where(real, o, torch.zeros_like(o))
    return o.unsqueeze(2).to(v.dtype), LinearAttentionState(kv, z if normalize else None)


def causal_linear_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: LinearAttentionState | None,
    *,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One decode token of causal linear attention: S += k vᵀ, z += k, o = q S / (q·z + eps). q, k, v ``[B,H,1,D]``."""
    check_step(q, "causal_linear_attention_step")
    check_causal_linear(q, k, v, eps=eps, normalize=normalize, initial_state=state, attention_mask=None,
                        op="causal_linear_attention_step")
    return _linear_step(q, k, v, None, state, None, 1.0, normalize, eps)


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
    """One decode token of GLA: S = diag(exp(g)) S + k vᵀ, o = scale·q S. q, k, log_decay, v ``[B, H, 1, D]``."""
    check_step(q, "gated_linear_attention_step")
    check_gated(q, k, v, log_decay, eps=eps, normalize=normalize, initial_state=state, attention_mask=None,
                op="gated_linear_attention_step")
    return _linear_step(q, k, v, log_decay, state, None, scale, normalize, eps)


def _shift_window(buffer: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Drop the oldest slot, append the new token last: ``[B, H, W, D]`` + ``[B, H, 1, D]``."""
    return torch.cat([buffer[:, :, 1:], new.to(buffer.dtype)], dim=2)


def _window_scores(qt, window_k, window_mask, scale, acc):
    """exp(s_j − m) over the window slots, m the true max over real slots (0 if none): ``[B, H, W]``."""
    s = scale * torch.einsum("bhd,bhwd->bhw", qt, window_k.to(acc))
    s = s.masked_fill(~window_mask[:, None, :], float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
    return torch.exp(s - m)


def _hybrid_step(q, k, v, fq, fk, window_weight, state, real, window, scale, eps, sinks=0):
    B, H, _, D = q.shape
    scale = D**-0.5 if scale is None else scale
    acc = accumulate_dtype(q, k, v, fq, fk)
    real = torch.ones(B, dtype=torch.bool, device=q.device) if real is None else real
    st = state if state is not None else empty_hybrid_state(k, v, fk, window, sinks)
    # The oldest slot leaves the window: a real token joins the linear sums, or, if it is one of the first
    # `sinks` real tokens of the stream (its rank: the real tokens seen before the window's oldest), its rank's
    # sink slot.
    leaving = st.window_mask[:, 0]
    if sinks:
        rank = st.seen - st.window_mask.sum(1)
        to_sink = leaving & (rank < sinks)
        slot = to_sink[:, None] & (torch.arange(sinks, device=q.device)[None, :] == rank[:, None])  # [B, S]
        sink_k = torch.where(slot[:, None, :, None], st.window_k[:, :, :1], st.sink_k)
        sink_v = torch.where(slot[:, None, :, None], st.window_v[:, :, :1], st.sink_v)
        sink_mask, seen = st.sink_mask | slot, st.seen + real.long()
        leaving = leaving & ~to_sink
    leaving = leaving.view(B, 1, 1)
    fk_old, v_old = st.window_fk[:, :, 0].to(acc), st.window_v[:, :, 0].to(acc)
    kv = st.kv.to(acc) + torch.where(leaving.unsqueeze(-1), fk_old.unsqueeze(-1) * v_old.unsqueeze(-2), 0.0)
    k_sum = st.k_sum.to(acc) + torch.where(leaving, fk_old, 0.0)
    keep = real.view(B, 1, 1, 1)
    window_k = _shift_window(st.window_k, torch.where(keep, k, 0.0))
    window_fk = _shift_window(st.window_fk, torch.where(keep, fk, 0.0))
    window_v = _shift_window(st.window_v, torch.where(keep, v, 0.0))
    window_mask = torch.cat([st.window_mask[:, 1:], real[:, None]], dim=1)

    qt, fqt = q[:, :, 0].to(acc), fq[:, :, 0].to(acc)
    soft_k, soft_v, soft_mask = window_k, window_v, window_mask
    if sinks:  # the sinks share the window's softmax (and its row max)
        soft_k, soft_v = torch.cat([sink_k, window_k], dim=2), torch.cat([sink_v, window_v], dim=2)
        soft_mask = torch.cat([sink_mask, window_mask], dim=1)
    p = _window_scores(qt, soft_k, soft_mask, scale, acc)  # [B, H, S+W]
    gamma = window_weight.to(acc)[None, :, None]
    num = gamma * torch.einsum("bhw,bhwv->bhv", p, soft_v.to(acc)) + torch.einsum("bhf,bhfv->bhv", fqt, kv)
    den = gamma * p.sum(-1, keepdim=True) + (fqt * k_sum).sum(-1, keepdim=True) + eps
    o = torch.where(real.view(B, 1, 1), num / den, 0.0)
    fields = (sink_k, sink_v, sink_mask, seen) if sinks else ()
    return o.unsqueeze(2).to(v.dtype), HybridAttentionState(kv, k_sum, window_k, window_fk, window_v, window_mask,
                                                            *fields)


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
    sinks: int = 0,
) -> tuple[torch.Tensor, HybridAttentionState]:
    """One decode token of the LoLCATs hybrid; the oldest window slot moves into kv/k_sum (or, for one of the first
    ``sinks`` real tokens, into its sink slot) as it leaves."""
    check_step(q, "hybrid_window_attention_step")
    check_hybrid(q, k, v, fq, fk, window_weight, window=window, eps=eps, initial_state=state, attention_mask=None,
                 op="hybrid_window_attention_step", sinks=sinks)
    return _hybrid_step(q, k, v, fq, fk, window_weight, state, None, window, scale, eps, sinks)


def _sliding_step(q, k, v, state, real, window, scale):
    B, H, _, D = q.shape
    scale = D**-0.5 if scale is None else scale
    acc = accumulate_dtype(q, k, v)
    real = torch.ones(B, dtype=torch.bool, device=q.device) if real is None else real
    st = state if state is not None else empty_window_state(k, v, window)
    keep = real.view(B, 1, 1, 1)
    window_k = _shift_window(st.window_k, torch.where(keep, k, 0.0))
    window_v = _shift_window(st.window_v, torch.where(keep, v, 0.0))
    window_mask = torch.cat([st.window_mask[:, 1:], real[:, None]], dim=1)
    p = _window_scores(q[:, :, 0].to(acc), window_k, window_mask, scale, acc)
    den = p.sum(-1, keepdim=True)
    den = torch.where(den > 0, den, 1.0)
    o = torch.einsum("bhw,bhwv->bhv", p, window_v.to(acc)) / den
    o = torch.where(real.view(B, 1, 1), o, 0.0)
    return o.unsqueeze(2).to(v.dtype), WindowState(window_k, window_v, window_mask)


def sliding_window_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: WindowState | None,
    *,
    window: int,
    scale: float | None = None,
) -> tuple[torch.Tensor, WindowState]:
    """One decode token of sliding-window softmax over the last ``window`` positions."""
    check_step(q, "sliding_window_attention_step")
    check_sliding_window(q, k, v, window=window, initial_state=state, attention_mask=None,
                         op="sliding_window_attention_step")
    return _sliding_step(q, k, v, state, None, window, scale)


def _loop(step, T, *seqs):
    """Run ``step(t, *slices)`` over t; returns the concatenated outputs and the last state."""
    outs = []
    state = None
    for t in range(T):
        o, state = step(t, state, *(x[:, :, t:t + 1] for x in seqs))
        outs.append(o)
    return torch.cat(outs, dim=2), state


def causal_linear_attention_recurrent(q, k, v, *, normalize=True, eps=1e-6, initial_state=None, attention_mask=None):
    """``causal_linear_attention`` computed token by token with the decode step (same signature)."""
    check_causal_linear(q, k, v, eps=eps, normalize=normalize, initial_state=initial_state,
                        attention_mask=attention_mask)
    real = real_positions(attention_mask, q)
    return _loop(lambda t, st, qt, kt, vt: _linear_step(qt, kt, vt, None, initial_state if t == 0 else st,
                                                        real[:, t], 1.0, normalize, eps), q.shape[2], q, k, v)


def gated_linear_attention_recurrent(q, k, v, log_decay, *, scale=1.0, normalize=False, eps=1e-6, initial_state=None,
                                     attention_mask=None):
    """``gated_linear_attention`` computed token by token with the decode step (same signature)."""
    check_gated(q, k, v, log_decay, eps=eps, normalize=normalize, initial_state=initial_state,
                attention_mask=attention_mask)
    real = real_positions(attention_mask, q)
    return _loop(lambda t, st, qt, kt, vt, gt: _linear_step(qt, kt, vt, gt, initial_state if t == 0 else st,
                                                            real[:, t], scale, normalize, eps),
                 q.shape[2], q, k, v, log_decay)


def hybrid_window_attention_recurrent(q, k, v, fq, fk, window_weight, *, window, scale=None, eps=1e-6,
                                      initial_state=None, attention_mask=None, sinks=0):
    """``hybrid_window_attention`` computed token by token with the decode step (same signature)."""
    check_hybrid(q, k, v, fq, fk, window_weight, window=window, eps=eps, initial_state=initial_state,
                 attention_mask=attention_mask, sinks=sinks)
    real = real_positions(attention_mask, q)
    return _loop(lambda t, st, qt, kt, vt, fqt, fkt: _hybrid_step(
        qt, kt, vt, fqt, fkt, window_weight, initial_state if t == 0 else st, real[:, t], window, scale, eps,
        sinks),
        q.shape[2], q, k, v, fq, fk)


def sliding_window_attention_recurrent(q, k, v, *, window, scale=None, initial_state=None, attention_mask=None):
    """``sliding_window_attention`` computed token by token with the decode step (same signature)."""
    check_sliding_window(q, k, v, window=window, initial_state=initial_state, attention_mask=attention_mask)
    real = real_positions(attention_mask, q)
    return _loop(lambda t, st, qt, kt, vt: _sliding_step(qt, kt, vt, initial_state if t == 0 else st, real[:, t],
                                                         window, scale), q.shape[2], q, k, v)
