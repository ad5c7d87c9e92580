"""Attention sinks for the hybrid: the first S real tokens of a stream stay under exact softmax after they leave
the sliding window (StreamingLLM, Xiao et al., arXiv 2309.17453), instead of entering the linear sums.

Why: pretrained decoders put much of each row's attention on the first tokens (the "sink"). Once those tokens are
older than the window, a LoLCATs hybrid must reproduce that spike with its feature maps, which it does poorly;
keeping S tokens exact costs S keys and values per layer, a constant. ``sinks=0`` is the paper's hybrid, unchanged.

Semantics shared by every backend. Each real token has a rank (the number of real tokens before it in the stream,
``state.seen`` included; padding has none). Tokens of rank < S are sinks. For query t:
W'(t) = W(t) ∪ {sinks at positions <= t − window} (one softmax, one row max m_t over W'(t)) and
L'(t) = L(t) minus the sinks. In the extended layout (the W window slots of the history, then the sequence) the
token at extended index e has left query t's window exactly when e <= t.
"""

from __future__ import annotations

import torch

from ._states import empty_sink_fields

__all__ = ["extended_sink_flags", "finish_sinks", "gather_new_sinks", "merged_sinks", "sink_fields"]


def sink_fields(state, k: torch.Tensor, v: torch.Tensor, sinks: int) -> tuple[torch.Tensor, ...]:
    """``(sink_k, sink_v, sink_mask, seen)`` of ``state`` (``check_hybrid`` made sure it has them), or empty ones
    when ``state`` is None."""
    if state is None:
        return empty_sink_fields(k, v, sinks)
    return state.sink_k, state.sink_v, state.sink_mask, state.seen


def extended_sink_flags(ext_mask: torch.Tensor, seen: torch.Tensor, window: int,
                        sinks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which extended slots ``[B, W+T]`` hold a sink, and every slot's rank.

    The window's real tokens are the last ones seen, so the oldest has rank ``seen − (real tokens in the window)``;
    ranks then count real slots in order.
    """
    first = seen - ext_mask[:, :window].sum(1)
    rank = first[:, None] + ext_mask.long().cumsum(1) - 1
    return ext_mask & (rank < sinks), rank


def gather_new_sinks(k_ext: torch.Tensor, v_ext: torch.Tensor, flags: torch.Tensor, rank: torch.Tensor,
                     sinks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sinks among the extended slots, by rank: ``(k [B,H,S,D], v [B,H,S,Dv], exists [B,S], index [B,S])``."""
    B, H = k_ext.shape[:2]
    slot = torch.arange(sinks, device=flags.device)
    onehot = flags[:, None, :] & (rank[:, None, :] == slot[None, :, None])  # [B, S, W+T]
    exists = onehot.any(-1)
    index = onehot.to(torch.uint8).argmax(-1)  # 0 where absent (masked by exists)
    k = k_ext.gather(2, index[:, None, :, None].expand(B, H, sinks, k_ext.shape[-1]))
    v = v_ext.gather(2, index[:, None, :, None].expand(B, H, sinks, v_ext.shape[-1]))
    return k, v, exists, index


def merged_sinks(state_fields, new, T: int):
    """Sink keys/values per rank slot (the history's, else this call's) and which query rows see each:
    ``(k [B,H,S,D], v [B,H,S,Dv], visible [B,T,S])``. A sink of this call is visible once it has left the window."""
    sink_k, sink_v, sink_mask, _ = state_fields
    k_new, v_new, exists, index = new
    old = sink_mask[:, None, :, None]
    k = torch.where(old, sink_k.to(k_new.dtype), k_new)
    v = torch.where(old, sink_v.to(v_new.dtype), v_new)
    t = torch.arange(T, device=index.device)
    visible = sink_mask[:, None, :] | (exists[:, None, :] & (index[:, None, :] <= t[None, :, None]))
    return k, v, visible


def finish_sinks(state_fields, new, real: torch.Tensor, T: int) -> tuple[torch.Tensor, ...]:
    """The sink fields after the call: slots filled by sinks that left the window (extended index < T)."""
    sink_k, sink_v, sink_mask, seen = state_fields
    k_new, v_new, exists, index = new
    fill = exists & (index < T) & ~sink_mask
    f = fill[:, None, :, None]
    return (torch.where(f, k_new.to(sink_k.dtype), sink_k), torch.where(f, v_new.to(sink_v.dtype), sink_v),
            sink_mask | fill, seen + real.sum(1))
