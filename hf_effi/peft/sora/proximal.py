"""SoRA's proximal step on the gates, its sparsifying threshold schedule, and a Trainer callback that applies it.

Ding et al., arXiv 2311.11696, Eq. (5): after the gradient step, ``g <- sign(g) * max(|g| - xi, 0)`` (the proximal
operator of ``xi * ||g||_1``, i.e. soft thresholding). As in the official code (``SparseAdamW``), ``xi`` is an
absolute threshold per optimizer step (default 3e-4, its STS-B setting), not multiplied by the learning rate.
The "sparsifying scheduler" (Sec. 3.3) raises xi in ``levels`` equal stages from ``xi`` to ``max_xi``, spaced
linearly ("linear"), linearly in exp(xi) ("log_linear") or geometrically ("exp_linear"), as the official code does;
here the stages are spread over the training steps instead of over extra epochs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import TrainerCallback

from hf_effi.peft.sora.layer import SoRALayer

__all__ = ["SCHEDULES", "SoRACallback", "soft_threshold_", "sora_gate_sparsity", "sora_proximal_step",
           "sora_threshold"]

SCHEDULES = ("constant", "linear", "log_linear", "exp_linear")


def soft_threshold_(tensor: torch.Tensor, threshold: float) -> torch.Tensor:
    """In place ``sign(t) * max(|t| - threshold, 0)``; returns ``tensor``."""
    if threshold < 0:
        raise ValueError(f"threshold={threshold} must be >= 0")
    with torch.no_grad():
        tensor.copy_(tensor.sign() * (tensor.abs() - threshold).clamp_min(0))
    return tensor


def sora_threshold(step: int, num_steps: int | None, *, xi: float = 3e-4, schedule: str = "constant",
                   max_xi: float | None = None, levels: int = 10) -> float:
    """The threshold for optimizer step ``step`` (0-based) of ``num_steps``: ``xi`` for "constant", else the value of
    the stage ``floor(step / num_steps * levels)`` of ``levels`` stages from ``xi`` to ``max_xi``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {list(SCHEDULES)}")
    if xi < 0:
        raise ValueError(f"xi={xi} must be >= 0")
    if schedule == "constant":
        return float(xi)
    if max_xi is None or max_xi < xi or not num_steps or levels < 1:
        raise ValueError(f"schedule={schedule!r} needs max_xi >= xi, num_steps > 0 and levels >= 1; got "
                         f"max_xi={max_xi}, num_steps={num_steps}, levels={levels}")
    if levels == 1:
        return float(xi)
    stage = min(int(step * levels / num_steps), levels - 1)
    frac = stage / (levels - 1)
    if schedule == "linear":
        return xi + frac * (max_xi - xi)
    if schedule == "log_linear":  # evenly spaced in exp(xi)
        return math.log(math.exp(xi) + frac * (math.exp(max_xi) - math.exp(xi)))
    if xi == 0:
        raise ValueError("schedule='exp_linear' is geometric and needs xi > 0")
    return xi * (max_xi / xi) ** frac  # exp_linear: evenly spaced in log(xi)


def _trainable_gates(model: nn.Module) -> list[torch.Tensor]:
    return [gate for module in model.modules() if isinstance(module, SoRALayer)
            for gate in module.sora_gate.values() if gate.requires_grad]


def sora_proximal_step(model: nn.Module, threshold: float) -> int:
    """Soft-threshold every trainable SoRA gate of ``model`` in place; returns how many gate entries stay non-zero.

    Call it right after ``optimizer.step()`` in a hand-written loop (``SoRACallback`` does this inside Trainer).
    """
    gates = _trainable_gates(model)
    if not gates:
        raise ValueError("sora_proximal_step: the model has no trainable SoRA gate; pass a model made with "
                         "get_peft_model(model, SoRAConfig(...)) whose adapter is active and trainable")
    for gate in gates:
        soft_threshold_(gate.data, threshold)
    return int(sum(int((g != 0).sum()) for g in gates))


def sora_gate_sparsity(model: nn.Module) -> dict[str, int]:
    """``{"nonzero": ..., "total": ...}`` gate entries over all SoRA layers and adapters of ``model``."""
    gates = [g for m in model.modules() if isinstance(m, SoRALayer) for g in m.sora_gate.values()]
    return {"nonzero": int(sum(int((g != 0).sum()) for g in gates)), "total": int(sum(g.numel() for g in gates))}


class SoRACallback(TrainerCallback):
    """Applies SoRA's proximal step to the gates after every optimizer step of a ``transformers.Trainer``.

    Args:
        xi: the soft threshold per step (or the first stage of the schedule).
        schedule: one of ``SCHEDULES``; anything but "constant" raises xi towards ``max_xi`` over training.
        max_xi: the last stage's threshold (scheduled modes only).
        levels: number of stages of the schedule.

    The step index comes from ``TrainerState.global_step``, so a resumed run continues the schedule exactly.
    Exclude the gates from weight decay if you want the paper's setting (the official code trains them with a
    separate optimizer without decay).
    """

    def __init__(self, xi: float = 3e-4, *, schedule: str = "constant", max_xi: float | None = None,
                 levels: int = 10) -> None:
        sora_threshold(0, 1, xi=xi, schedule=schedule, max_xi=max_xi, levels=levels)  # validates the arguments
        self.xi, self.schedule, self.max_xi, self.levels = xi, schedule, max_xi, levels
        self.last_threshold: float | None = None
        self.last_nonzero: int | None = None

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("SoRACallback needs the model; it is passed by transformers.Trainer")
        threshold = sora_threshold(state.global_step, state.max_steps, xi=self.xi, schedule=self.schedule,
                                   max_xi=self.max_xi, levels=self.levels)
        self.last_threshold = threshold
        self.last_nonzero = sora_proximal_step(model, threshold)
        return control
