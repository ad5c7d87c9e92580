"""Obviously-correct linear-attention references: quadratic masked forms, computed in fp32.

Every op builds the full ``[T, T]`` (or ``[T, W+T]``) weight matrix with explicit masks, so each formula can be
read off the code; the chunked and Triton backends are tested against these. The token-by-token recurrent forms
(``<op>_recurrent``) and the decode steps live in ``reference_recurrent.py`` and are re-exported here; the two
references are checked against each other.

Layout ``[B, H, T, D]``; outputs have v's dtype; running sums are float32 (float64 for float64 inputs).
``attention_mask`` ``[B, T]``: a padded position adds nothing to any state or output and its own row is 0.
Windows are by position: W(t) = {real j : t − window < j ≤ t}, L(t) = {real j : j ≤ t − window}; the tokens of an
``initial_state`` window sit at positions −W … −1, and its linear sums are older still.

Papers: Katharopoulos et al., "Transformers are RNNs" (arXiv 2006.16236) for (a)/(d); Zhang et al., "LoLCATs"
(arXiv 2410.10254, Eq. 7) for (b); Yang et al., "Gated Linear Attention Transformers" (arXiv 2312.06635) for (c).
"""

from __future__ import annotations

import torch

from ._checks import (
    check_causal_linear,
    check_gated,
    check_hybrid,
    check_noncausal_linear,
    check_sliding_window,
    real_positions,
)
from ._sinks import extended_sink_flags, finish_sinks, gather_new_sinks, sink_fields
from ._states import (
    HybridAttentionState,
    LinearAttentionState,
    WindowState,
    accumulate_dtype,
    empty_hybrid_state,
    empty_window_state,
)
from .reference_recurrent import (
    causal_linear_attention_recurrent,
    causal_linear_attention_step,
    gated_linear_attention_recurrent,
    gated_linear_attention_step,
    hybrid_window_attention_recurrent,
    hybrid_window_attention_step,
    sliding_window_attention_recurrent,
    sliding_window_attention_step,
)

__all__ = [
    "HybridAttentionState",
    "LinearAttentionState",
    "WindowState",
    "causal_linear_attention",
    "causal_linear_attention_recurrent",
    "causal_linear_attention_step",
    "gated_linear_attention",
    "gated_linear_attention_recurrent",
    "gated_linear_attention_step",
    "hybrid_window_attention",
    "hybrid_window_attention_recurrent",
    "hybrid_window_attention_step",
    "noncausal_linear_attention",
    "sliding_window_attention",
    "sliding_window_attention_recurrent",
    "sliding_window_attention_step",
]


def _zero_padding(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Zero the padded positions of ``x`` ``[B, H, T, D]`` (``where``, so garbage or NaN in padding cannot leak)."""
    return torch.where(real[:, None, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _linear_sums(state: LinearAttentionState | None, B: int, H: int, Dk: int, Dv: int, acc: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if state is None:
        return torch.zeros(B, H, Dk, Dv, dtype=acc, device=device), torch.zeros(B, H, Dk, dtype=acc, device=device)
    k_sum = state.k_sum if state.k_sum is not None else torch.zeros(B, H, Dk, dtype=acc, device=device)
    return state.kv.to(acc), k_sum.to(acc)


def _linear_attention(q, k, v, pair_mask, normalize, eps, initial_state, attention_mask):
    """(a) and (d): o_t = q_t (S_0 + Σ_{s∈pair_mask[t]} k_s v_sᵀ) [/ q_t·(z_0 + Σ k_s) + eps]."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    acc = accumulate_dtype(q, k, v)
    real = real_positions(attention_mask, q)
    qf, kf, vf = q.to(acc), _zero_padding(k.to(acc), real), _zero_padding(v.to(acc), real)
    kv0, z0 = _linear_sums(initial_state, B, H, Dk, Dv, acc, q.device)
    scores = (qf @ kf.transpose(-1, -2)).masked_fill(~pair_mask, 0.0)  # [B, H, T, T]
    o = scores @ vf + qf @ kv0
    if normalize:
        o = o / (scores.sum(-1, keepdim=True) + (qf @ z0.unsqueeze(-1)) + eps)
    o = _zero_padding(o, real)
    kv = kv0 + kf.transpose(-1, -2) @ vf
    k_sum = z0 + kf.sum(2) if normalize else None
    return o.to(v.dtype), LinearAttentionState(kv, k_sum)


def causal_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    normalize: bool = True,
    eps: float = 1e-6,
    initial_state: LinearAttentionState | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Causal linear attention, quadratic form: o_t = q_t S_t / (q_t·z_t + eps), S_t, z_t inclusive of t.

    q, k: ``[B, H, T, Dk]``, already feature-mapped (non-negative when ``normalize``; no scale is applied);
    v: ``[B, H, T, Dv]``. Returns o ``[B, H, T, Dv]`` and ``LinearAttentionState(kv [B,H,Dk,Dv], k_sum [B,H,Dk])``
    (``k_sum`` None when ``normalize=False``).
    """
    check_causal_linear(q, k, v, eps=eps, normalize=normalize, initial_state=initial_state,
                        attention_mask=attention_mask)
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return _linear_attention(q, k, v, causal, normalize, eps, initial_state, attention_mask)


def noncausal_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    normalize: bool = True,
    eps: float = 1e-6,
    initial_state: LinearAttentionState | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Encoder (bidirectional) linear attention: every query sees every real key plus ``initial_state``.

    Shapes as ``causal_linear_attention``; the final state sums every real token.
    """
    check_noncausal_linear(q, k, v, eps=eps, normalize=normalize, initial_state=initial_state,
                           attention_mask=attention_mask)
    T = q.shape[2]
    everything = torch.ones(T, T, dtype=torch.bool, device=q.device)
    return _linear_attention(q, k, v, everything, normalize, eps, initial_state, attention_mask)


def _extended_window(state, fields, real):
    """Prepend the state's window slots (positions −W … −1) to the sequence: tensors ``[B, H, W+T, ·]``, mask."""
    tensors = [torch.cat([old.to(new.dtype), new], dim=2) for old, new in fields]
    mask = torch.cat([state.window_mask, real], dim=1)  # [B, W+T]
    return [_zero_padding(t, mask) for t in tensors], mask


def _window_masks(T: int, window: int, ext_mask: torch.Tensor):
    """For query t and extended key j' (position j' − W): in the window, and in the linear part (older)."""
    device = ext_mask.device
    distance = torch.arange(T, device=device)[:, None] - (torch.arange(window + T, device=device) - window)[None, :]
    real_key = ext_mask[:, None, None, :]  # [B, 1, 1, W+T]
    in_window = (distance >= 0) & (distance < window) & real_key
    in_linear = (distance >= window) & real_key
    return in_window, in_linear


def _window_softmax_terms(q, k_ext, in_window, scale):
    """exp(s_tj − m_t) over the window, with m_t the true row max (0 for rows with no key: padded queries)."""
    s = (scale * (q @ k_ext.transpose(-1, -2))).masked_fill(~in_window, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
    return torch.exp(s - m)  # exp(-inf) = 0 outside the window, with a zero gradient


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
    sinks: int = 0,
) -> tuple[torch.Tensor, HybridAttentionState]:
    """LoLCATs sliding-window + linear hybrid (arXiv 2410.10254, Eq. 7) under one shared normaliser.

    o_t = [γ_h Σ_{W(t)} exp(s_tj − m_t) v_j + fq_t·Σ_{L(t)} fk_j v_jᵀ] / [γ_h Σ_{W(t)} exp(s_tj − m_t)
    + fq_t·Σ_{L(t)} fk_j + eps], s_tj = scale·q_t·k_j, m_t the row max over W(t).
    q, k: ``[B, H, T, Dqk]`` (after rotary); fq, fk: ``[B, H, T, F]`` (feature-mapped); v: ``[B, H, T, Dv]``;
    window_weight: ``[H]`` γ (sigmoid already applied); scale defaults to Dqk**-0.5.
    ``sinks`` > 0 keeps the first ``sinks`` real tokens in the softmax part after they leave the window (see
    ``_sinks.py``): here the history's sink slots are extra keys every query sees, and a sink of this call moves
    from L(t) to W(t) once it has left the window.
    """
    check_hybrid(q, k, v, fq, fk, window_weight, window=window, eps=eps, initial_state=initial_state,
                 attention_mask=attention_mask, sinks=sinks)
    B, H, T, D = q.shape
    scale = D**-0.5 if scale is None else scale
    acc = accumulate_dtype(q, k, v, fq, fk)
    real = real_positions(attention_mask, q)
    state = initial_state if initial_state is not None else empty_hybrid_state(k, v, fk, window)
    (k_ext, fk_ext, v_ext), ext_mask = _extended_window(
        state, [(state.window_k, k), (state.window_fk, fk), (state.window_v, v)], real)
    in_window, in_linear = _window_masks(T, window, ext_mask)
    kx, fkx, vx = k_ext.to(acc), fk_ext.to(acc), v_ext.to(acc)
    sink_state = None
    if sinks:
        fields = sink_fields(initial_state, k, v, sinks)
        flags, rank = extended_sink_flags(ext_mask, fields[3], window, sinks)
        sink_state = finish_sinks(fields, gather_new_sinks(k_ext, v_ext, flags, rank, sinks), real, T)
        left = in_linear & flags[:, None, None, :]  # sinks older than the window: softmax, not linear
        in_window, in_linear = in_window | left, in_linear & ~left
        fkx = _zero_padding(fkx, ~flags)  # a sink never enters the linear sums
        history = fields[2][:, None, None, :].expand(B, 1, T, sinks)
        in_window = torch.cat([history, in_window], dim=-1)
        in_linear = torch.cat([torch.zeros_like(history), in_linear], dim=-1)
        kx = torch.cat([fields[0].to(acc), kx], dim=2)
        vx = torch.cat([fields[1].to(acc), vx], dim=2)
        fkx = torch.cat([fkx.new_zeros(B, H, sinks, fkx.shape[-1]), fkx], dim=2)
    qf, fqf = q.to(acc), fq.to(acc)
    gamma = window_weight.to(acc)[None, :, None, None]

    p = _window_softmax_terms(qf, kx, in_window, scale)  # [B, H, T, W+T]
    a = (fqf @ fkx.transpose(-1, -2)).masked_fill(~in_linear, 0.0)
    kv0, z0 = state.kv.to(acc), state.k_sum.to(acc)
    num = gamma * (p @ vx) + a @ vx + fqf @ kv0
    den = gamma * p.sum(-1, keepdim=True) + a.sum(-1, keepdim=True) + fqf @ z0.unsqueeze(-1) + eps
    o = _zero_padding(num / den, real)

    # After T tokens the first T extended slots (positions <= T-1-window) have left the window.
    first = sinks  # the history's sink slots lead the key axis when sinks > 0
    kv = kv0 + fkx[:, :, first:first + T].transpose(-1, -2) @ vx[:, :, first:first + T]
    k_sum = z0 + fkx[:, :, first:first + T].sum(2)
    final = HybridAttentionState(kv, k_sum, k_ext[:, :, T:], fk_ext[:, :, T:], v_ext[:, :, T:], ext_mask[:, T:],
                                 *(sink_state or ()))
    return o.to(v.dtype), final


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    initial_state: WindowState | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, WindowState]:
    """Causal softmax over the last ``window`` positions only (the SWA branch of Liger, arXiv 2503.01496).

    q, k: ``[B, H, T, D]``; v: ``[B, H, T, Dv]``; scale defaults to D**-0.5. Returns o and the last-W ``WindowState``.
    """
    check_sliding_window(q, k, v, window=window, initial_state=initial_state, attention_mask=attention_mask)
    T, D = q.shape[2], q.shape[3]
    scale = D**-0.5 if scale is None else scale
    acc = accumulate_dtype(q, k, v)
    real = real_positions(attention_mask, q)
    state = initial_state if initial_state is not None else empty_window_state(k, v, window)
    (k_ext, v_ext), ext_mask = _extended_window(state, [(state.window_k, k), (state.window_v, v)], real)
    in_window, _ = _window_masks(T, window, ext_mask)
    p = _window_softmax_terms(q.to(acc), k_ext.to(acc), in_window, scale)
    den = p.sum(-1, keepdim=True)
    den = torch.where(den > 0, den, torch.ones((), dtype=den.dtype, device=den.device))  # padded rows: 0 / 1
    o = _zero_padding((p @ v_ext.to(acc)) / den, real)
    return o.to(v.dtype), WindowState(k_ext[:, :, T:], v_ext[:, :, T:], ext_mask[:, T:])


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
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Gated linear attention (GLA, arXiv 2312.06635, Eq. 2-3) with per-key-dimension decay, quadratic form.

    S_t = diag(exp(g_t)) S_{t−1} + k_t v_tᵀ, o_t = scale·q_t S_t (/ (scale·q_t·z_t + eps) when ``normalize``).
    Unrolled: o_t = scale Σ_{s≤t} (q_t ⊙ exp(G_t − G_s))·k_s v_s + scale (q_t ⊙ exp(G_t)) S_0, G = cumsum(g).
    The pairwise decay tensor ``[B, H, T, T, Dk]`` only ever exponentiates G_t − G_s <= 0, so it cannot overflow.
    q, k, log_decay: ``[B, H, T, Dk]`` (log_decay <= 0; a padded position neither decays nor adds); v ``[B, H, T, Dv]``.
    """
    check_gated(q, k, v, log_decay, eps=eps, normalize=normalize, initial_state=initial_state,
                attention_mask=attention_mask)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    acc = accumulate_dtype(q, k, v, log_decay)
    real = real_positions(attention_mask, q)
    qf, kf, vf = q.to(acc), _zero_padding(k.to(acc), real), _zero_padding(v.to(acc), real)
    G = _zero_padding(log_decay.to(acc), real).cumsum(dim=2)  # [B, H, T, Dk]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[:, :, None]
    pair = (G[:, :, :, None, :] - G[:, :, None, :, :]).masked_fill(~causal, float("-inf")).exp()  # [B,H,T,T,Dk]
    scores = scale * torch.einsum("bhtd,bhtsd,bhsd->bhts", qf, pair, kf)
    kv0, z0 = _linear_sums(initial_state, B, H, Dk, Dv, acc, q.device)
    q_decayed = scale * qf * G.exp()
    o = scores @ vf + q_decayed @ kv0
    if normalize:
        o = o / (scores.sum(-1, keepdim=True) + q_decayed @ z0.unsqueeze(-1) + eps)
    o = _zero_padding(o, real)
    to_end = (G[:, :, -1:] - G).exp()  # decay from each position to the end of the sequence
    kv = G[:, :, -1].exp().unsqueeze(-1) * kv0 + (kf * to_end).transpose(-1, -2) @ vf
    k_sum = G[:, :, -1].exp() * z0 + (kf * to_end).sum(2) if normalize else None
    return o.to(v.dtype), LinearAttentionState(kv, k_sum)
