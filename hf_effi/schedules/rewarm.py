"""Re-warm and re-decay for continual pretraining, starting from the learning rate a checkpoint ended with.

Ibrahim et al., "Simple and Scalable Strategies to Continually Pre-train Large Language Models" (arXiv 2403.08763):
re-warming the lr to the original peak and re-decaying it (cosine, to ``eta_min = 0.1 eta_max``) on the new data,
with some replay, matches re-training on the union. Gupta et al., "Continual Pre-Training of Large Language Models:
How to (re)warm your model?", find the warmup length matters little; about 1% of the steps is the usual choice
(``warmup=0.01``).

As multipliers of the new peak (the optimizer's lr): the warmup rises linearly from ``checkpoint_lr / peak`` to 1
(not from 0: the model already trains at ``checkpoint_lr``), then decays to ``floor`` along ``decay_type``.
"""

from __future__ import annotations

import functools

from hf_effi.schedules.shapes import DECAY_TYPES, check_fraction, decay_to

__all__ = ["build_rewarm", "rewarm"]


def rewarm(
    step: int,
    *,
    num_training_steps: int,
    num_warmup_steps: int,
    start: float,
    floor: float,
    decay_type: str = "cosine",
) -> float:
    if step < num_warmup_steps:
        return start + (1.0 - start) * step / num_warmup_steps
    span = max(1, num_training_steps - num_warmup_steps)
    return decay_to(1.0, floor, (step - num_warmup_steps) / span, decay_type, span)


def build_rewarm(
    *,
    num_training_steps: int,
    num_warmup_steps: int,
    peak_lr: float,
    checkpoint_lr: float | None = None,
    floor: float = 0.1,
    decay_type: str = "cosine",
):
    """``checkpoint_lr``: the absolute lr the resumed checkpoint was last trained with (0 if it was fully
    annealed); the peak is the optimizer's lr."""
    if checkpoint_lr is None:
        raise ValueError(
            "schedule 'rewarm' needs checkpoint_lr, the learning rate the checkpoint ended with (e.g. the last "
            "'learning_rate' in its trainer_state.json log_history; 0.0 if it was annealed to zero)"
        )
    if isinstance(checkpoint_lr, bool) or not isinstance(checkpoint_lr, (int, float)) or checkpoint_lr < 0:
        raise ValueError(f"rewarm: checkpoint_lr={checkpoint_lr!r} must be a number >= 0")
    if not peak_lr > 0:
        raise ValueError(f"rewarm: the optimizer's learning rate ({peak_lr}) is the new peak and must be > 0")
    if checkpoint_lr > peak_lr:
        raise ValueError(
            f"rewarm: checkpoint_lr={checkpoint_lr} is above the new peak (the optimizer's lr, {peak_lr}); "
            "re-warming goes up to the peak, so raise the optimizer's lr or use a decaying schedule"
        )
    check_fraction("floor", floor)
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"rewarm: decay_type={decay_type!r} is not one of {', '.join(DECAY_TYPES)}")
    settings = dict(
        num_training_steps=num_training_steps,
        num_warmup_steps=num_warmup_steps,
        start=float(checkpoint_lr) / float(peak_lr),
        floor=float(floor),
        decay_type=decay_type,
    )
    return functools.partial(rewarm, **settings), dict(
        settings, checkpoint_lr=float(checkpoint_lr), peak_lr=float(peak_lr)
    )
