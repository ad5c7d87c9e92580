"""The recurrent states every linear-attention op takes as ``initial_state`` and returns as ``final_state``.

Re-exported by ``reference.py`` and the package ``__init__``. Running sums (``kv``, ``k_sum``) are float32
(float64 when the inputs are float64, so ``gradcheck`` works); window buffers keep the inputs' dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "HybridAttentionState",
    "LinearAttentionState",
    "WindowState",
    "accumulate_dtype",
    "empty_hybrid_state",
    "empty_sink_fields",
    "empty_window_state",
]


class LinearAttentionState(NamedTuple):
    """``kv`` ``[B, H, Dk, Dv]`` = Σ k_s v_sᵀ; ``k_sum`` ``[B, H, Dk]`` = Σ k_s, or None when not normalising."""

    kv: torch.Tensor
    k_sum: torch.Tensor | None


class HybridAttentionState(NamedTuple):
    """The LoLCATs hybrid's state: linear sums over tokens older than the window plus the window itself.

    ``kv`` ``[B, H, F, Dv]`` and ``k_sum`` ``[B, H, F]`` sum every real token that has left the window;
    ``window_k`` ``[B, H, W, Dqk]``, ``window_fk`` ``[B, H, W, F]``, ``window_v`` ``[B, H, W, Dv]`` hold the last W
    positions, oldest first; ``window_mask`` ``[B, W]`` is False for empty slots and padding.

    With attention sinks (``sinks=S > 0``): ``sink_k`` ``[B, H, S, Dqk]`` and ``sink_v`` ``[B, H, S, Dv]`` hold the
    first S real tokens of the stream once they have left the window (slot r = the token of rank r), ``sink_mask``
    ``[B, S]`` marks filled slots and ``seen`` ``[B]`` (int64) counts the real tokens seen so far. Without sinks
    the four fields are None.
    """

    kv: torch.Tensor
    k_sum: torch.Tensor
    window_k: torch.Tensor
    window_fk: torch.Tensor
    window_v: torch.Tensor
    window_mask: torch.Tensor
    sink_k: torch.Tensor | None = None
    sink_v: torch.Tensor | None = None
    sink_mask: torch.Tensor | None = None
    seen: torch.Tensor | None = None


class WindowState(NamedTuple):
    """The last W positions for plain sliding-window softmax: ``window_k``, ``window_v``, ``window_mask``."""

    window_k: torch.Tensor
    window_v: torch.Tensor
    window_mask: torch.Tensor


def accumulate_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64: sums never run in half precision."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def empty_window_state(k: torch.Tensor, v: torch.Tensor, window: int) -> WindowState:
    """A window with no tokens yet (every slot masked out), shaped after ``k`` and ``v`` ``[B, H, T, D]``."""
    B, H = k.shape[:2]
    return WindowState(
        k.new_zeros(B, H, window, k.shape[-1]),
        v.new_zeros(B, H, window, v.shape[-1]),
        torch.zeros(B, window, dtype=torch.bool, device=k.device),
    )


def empty_hybrid_state(k: torch.Tensor, v: torch.Tensor, fk: torch.Tensor, window: int,
                       sinks: int = 0) -> HybridAttentionState:
    """An empty history for the hybrid: zero sums, a window with every slot masked out (and empty sink slots)."""
    B, H = k.shape[:2]
    F, Dv = fk.shape[-1], v.shape[-1]
    acc = accumulate_dtype(k, v, fk)
    win = empty_window_state(k, v, window)
    return HybridAttentionState(
        torch.zeros(B, H, F, Dv, dtype=acc, device=k.device),
        torch.zeros(B, H, F, dtype=acc, device=k.device),
        win.window_k,
        fk.new_zeros(B, H, window, F),
        win.window_v,
        win.window_mask,
        *(empty_sink_fields(k, v, sinks) if sinks else ()),
    )


def empty_sink_fields(k: torch.Tensor, v: torch.Tensor, sinks: int) -> tuple[torch.Tensor, ...]:
    """``(sink_k, sink_v, sink_mask, seen)`` with no sink filled and nothing seen."""
    B, H = k.shape[:2]
    return (k.new_zeros(B, H, sinks, k.shape[-1]), v.new_zeros(B, H, sinks, v.shape[-1]),
            torch.zeros(B, sinks, dtype=torch.bool, device=k.device),
            torch.zeros(B, dtype=torch.int64, device=k.device))
