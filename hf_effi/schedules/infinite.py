"""Infinite learning-rate schedule: warmup, cooldown to a constant, constant for as long as data comes, and an
anneal only when a deployable checkpoint is wanted.

Ibrahim et al., "Simple and Scalable Strategies to Continually Pre-train Large Language Models" (arXiv 2403.08763)
proposed it to avoid re-warming in continual pretraining; Singh et al., "Beyond Cosine Decay: On the effectiveness of
Infinite Learning Rate Schedule for Continual Pre-training" (arXiv 2503.02844) compare it with repeated cosine.
Phases, as multipliers of the peak (the optimizer's lr):

1. warmup ``0 -> 1`` over ``W`` steps (the shared ``step / W`` convention);
2. cooldown ``1 -> constant_lr`` over ``cooldown_steps`` (cosine by default);
3. constant ``constant_lr``;
4. anneal ``constant_lr -> floor`` over ``anneal_steps`` from ``anneal_from_step`` (exponential, i.e. geometric,
   by default), then ``floor``.

Our choices where the papers were not checked line by line: ``constant_lr=0.5``, ``floor=0.1`` (the
``eta_min = 0.1 eta_max`` of Ibrahim et al.'s re-decay), 10% cooldown and 10% anneal. ``anneal_from_step=None``
anneals over the last ``anneal_steps`` of this run; ``anneal_steps=0`` never anneals. ``num_training_steps``,
``anneal_from_step`` and ``anneal_steps`` may change when resuming, so a constant-phase checkpoint can be annealed
later ("on demand").
"""

from __future__ import annotations

import functools

from hf_effi.schedules.shapes import DECAY_TYPES, check_fraction, decay_to, steps_from

__all__ = ["build_infinite", "infinite"]

COOLDOWN_TYPES = ("cosine", "linear")


def infinite(
    step: int,
    *,
    num_warmup_steps: int,
    cooldown_steps: int,
    constant_lr: float,
    anneal_from_step: int | None,
    anneal_steps: int,
    floor: float,
    cooldown_type: str = "cosine",
    anneal_type: str = "exponential",
) -> float:
    if step < num_warmup_steps:
        return step / num_warmup_steps
    cooldown_end = num_warmup_steps + cooldown_steps
    if step < cooldown_end:
        return decay_to(1.0, constant_lr, (step - num_warmup_steps) / cooldown_steps, cooldown_type)
    if anneal_from_step is None or anneal_steps == 0 or step < anneal_from_step:
        return constant_lr
    return decay_to(constant_lr, floor, (step - anneal_from_step) / anneal_steps, anneal_type, anneal_steps)


def build_infinite(
    *,
    num_training_steps: int,
    num_warmup_steps: int,
    constant_lr: float = 0.5,
    cooldown_steps: int | float = 0.1,
    cooldown_type: str = "cosine",
    anneal_steps: int | float = 0.1,
    anneal_from_step: int | None = None,
    anneal_type: str = "exponential",
    floor: float = 0.1,
):
    check_fraction("constant_lr", constant_lr)
    check_fraction("floor", floor)
    if floor > constant_lr:
        raise ValueError(f"infinite: floor={floor} must be <= constant_lr={constant_lr} (the anneal goes down)")
    if cooldown_type not in COOLDOWN_TYPES:
        raise ValueError(f"infinite: cooldown_type={cooldown_type!r} is not one of {', '.join(COOLDOWN_TYPES)}")
    if anneal_type not in DECAY_TYPES:
        raise ValueError(f"infinite: anneal_type={anneal_type!r} is not one of {', '.join(DECAY_TYPES)}")
    cooldown = steps_from("cooldown_steps", cooldown_steps, num_training_steps)
    anneal = steps_from("anneal_steps", anneal_steps, num_training_steps)
    if anneal_from_step is not None and (isinstance(anneal_from_step, bool) or not isinstance(anneal_from_step, int)):
        raise TypeError(f"infinite: anneal_from_step must be an int step or None, got {anneal_from_step!r}")
    start = num_training_steps - anneal if anneal_from_step is None and anneal > 0 else anneal_from_step
    plateau = num_warmup_steps + cooldown
    if start is not None and anneal > 0 and (start < plateau or start + anneal > num_training_steps):
        raise ValueError(
            f"infinite: warmup ({num_warmup_steps}) + cooldown ({cooldown}) + anneal ({anneal} steps from step "
            f"{start}) does not fit in num_training_steps={num_training_steps}: the anneal must start at or after "
            f"step {plateau} and end by the last step; shorten cooldown_steps/anneal_steps or move anneal_from_step"
        )
    if start is None and plateau > num_training_steps:
        raise ValueError(
            f"infinite: warmup ({num_warmup_steps}) + cooldown ({cooldown}) is longer than "
            f"num_training_steps={num_training_steps}; shorten cooldown_steps or train longer"
        )
    settings = dict(
        num_training_steps=num_training_steps,
        num_warmup_steps=num_warmup_steps,
        cooldown_steps=cooldown,
        constant_lr=float(constant_lr),
        anneal_from_step=start,
        anneal_steps=anneal,
        floor=float(floor),
        cooldown_type=cooldown_type,
        anneal_type=anneal_type,
    )
    profile = functools.partial(infinite, **{k: v for k, v in settings.items() if k != "num_training_steps"})
    extras = {"resumable": ("num_training_steps", "anneal_from_step", "anneal_steps")}
    return profile, settings, extras
