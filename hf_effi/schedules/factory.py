"""The schedule registry and ``make_scheduler``.

A schedule is registered as a *builder*: a function taking ``num_training_steps``, ``num_warmup_steps`` and the
schedule's own keyword arguments, that validates them and returns ``(profile, settings)`` where ``profile`` is a
picklable ``step -> multiplier`` callable. Which keyword arguments a schedule accepts is read from the builder's
signature, so a wrong one gets an error listing the valid ones instead of a bare ``TypeError``.

A builder may also return ``(profile, settings, extras)`` with ``extras`` holding ``momentum`` (a ``step -> beta1``
callable, for 1cycle) and/or ``resumable`` (settings that may change on resume). A builder that declares a
``peak_lr`` parameter receives the optimizer's learning rate (first param group) for schedules whose shape depends
on the absolute lr (``power``, ``rewarm``); it is not a user argument.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch

from hf_effi.registry import Registry, closest_names
from hf_effi.schedules import profiles
from hf_effi.schedules.base import ProfileScheduler
from hf_effi.schedules.infinite import build_infinite
from hf_effi.schedules.one_cycle import build_one_cycle
from hf_effi.schedules.power import build_power
from hf_effi.schedules.refined import build_refined
from hf_effi.schedules.rewarm import build_rewarm

__all__ = ["SCHEDULES", "make_scheduler", "register_schedule", "resolve_warmup"]

SCHEDULES = Registry("schedule", family="schedules")

_BUILDER_FIXED = ("num_training_steps", "num_warmup_steps", "peak_lr")


def register_schedule(name: str, builder: Callable, description: str) -> Callable:
    return SCHEDULES.register(name, builder, description)


def resolve_warmup(warmup: int | float, num_training_steps: int) -> int:
    """Warmup as steps (an ``int``) or as a fraction of training (a ``float`` in ``[0, 1)``) -> steps."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)):
        raise TypeError(f"warmup must be an int (steps) or a float in [0, 1) (fraction), got {warmup!r}")
    if isinstance(warmup, float):
        if not 0.0 <= warmup < 1.0:
            raise ValueError(
                f"warmup={warmup} is a float, so it is read as a fraction of training and must be in [0, 1); "
                "pass an int for a number of steps"
            )
        steps = round(warmup * num_training_steps)
    else:
        steps = warmup
    if steps < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if steps >= num_training_steps:
        raise ValueError(
            f"warmup ({steps} steps) is not shorter than training (num_training_steps={num_training_steps}): "
            "lower warmup or train longer"
        )
    return steps


def _check_floor(floor: float) -> None:
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor is a fraction of the peak learning rate and must be in [0, 1], got {floor}")


def _bind(fn: Callable, **kwargs) -> tuple[Callable[[int], float], dict]:
    return functools.partial(fn, **kwargs), dict(kwargs)


def _constant(*, num_training_steps: int, num_warmup_steps: int):
    return _bind(profiles.constant, num_training_steps=num_training_steps, num_warmup_steps=num_warmup_steps)


def _linear(*, num_training_steps: int, num_warmup_steps: int, floor: float = 0.0):
    _check_floor(floor)
    return _bind(profiles.linear, num_training_steps=num_training_steps, num_warmup_steps=num_warmup_steps, floor=floor)


def _cosine(*, num_training_steps: int, num_warmup_steps: int, floor: float = 0.0):
    _check_floor(floor)
    return _bind(profiles.cosine, num_training_steps=num_training_steps, num_warmup_steps=num_warmup_steps, floor=floor)


def _rex(*, num_training_steps: int, num_warmup_steps: int, floor: float = 0.0, alpha: float = 0.5):
    _check_floor(floor)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1) (0.5 is the REX paper's profile), got {alpha}")
    return _bind(
        profiles.rex, num_training_steps=num_training_steps, num_warmup_steps=num_warmup_steps, floor=floor, alpha=alpha
    )


def _wsd(
    *,
    num_training_steps: int,
    num_warmup_steps: int,
    num_decay_steps: int | None = None,
    decay_ratio: float = 0.1,
    decay_type: str = "1-sqrt",
    floor: float = 0.0,
    half_life: float | None = None,
):
    _check_floor(floor)
    if decay_type not in profiles.WSD_DECAY_TYPES:
        raise ValueError(f"decay_type={decay_type!r} is not one of {', '.join(profiles.WSD_DECAY_TYPES)}")
    if num_decay_steps is None:
        if not 0.0 < decay_ratio <= 1.0:
            raise ValueError(f"decay_ratio is a fraction of num_training_steps in (0, 1], got {decay_ratio}")
        num_decay_steps = max(1, math.ceil(decay_ratio * num_training_steps))
    if num_decay_steps < 1 or num_warmup_steps + num_decay_steps > num_training_steps:
        raise ValueError(
            f"num_decay_steps={num_decay_steps} must be >= 1 and fit after warmup ({num_warmup_steps} steps) "
            f"within num_training_steps={num_training_steps}"
        )
    if half_life is not None and half_life <= 0:
        raise ValueError(f"half_life must be > 0 steps, got {half_life}")
    if half_life is not None and decay_type != "exponential":
        raise ValueError(f"half_life only applies to decay_type='exponential', not {decay_type!r}")
    return _bind(
        profiles.wsd,
        num_training_steps=num_training_steps,
        num_warmup_steps=num_warmup_steps,
        num_decay_steps=num_decay_steps,
        decay_type=decay_type,
        floor=floor,
        half_life=half_life,
    )


register_schedule("constant", _constant, "Constant learning rate after an optional linear warmup.")
register_schedule("linear", _linear, "Linear decay to a floor (Defazio et al. 2023: worst-case optimal).")
register_schedule("cosine", _cosine, "Half-cosine decay to a floor (SGDR).")
register_schedule("rex", _rex, "REX profile (1-p)/(1-p/2) (Chen et al., arXiv 2107.04197).")
register_schedule(
    "wsd",
    _wsd,
    "Warmup-stable-decay; linear/cosine/1-sqrt/exponential decay over the last 10% by default (MiniCPM).",
)


register_schedule(
    "power",
    build_power,
    "Power scheduler: lr = min(peak, batch * a * tokens^b), warmup, final decay; needs batch_size, seq_len "
    "(Shen et al., arXiv 2408.13359; constants fitted with muP).",
)
register_schedule(
    "one_cycle",
    build_one_cycle,
    "1cycle: lr up then down, momentum/beta1 down then up; torch OneCycleLR defaults (Smith, arXiv 1803.09820).",
)
register_schedule(
    "infinite",
    build_infinite,
    "Infinite: warmup, cooldown to a constant, constant, anneal on demand (Ibrahim et al. arXiv 2403.08763).",
)
register_schedule(
    "rewarm",
    build_rewarm,
    "Continual pretraining: re-warm from checkpoint_lr to the peak, re-decay to 0.1x (arXiv 2403.08763).",
)
register_schedule(
    "refined",
    build_refined,
    "Refined from a previous run's gradient norms (Defazio et al., arXiv 2310.07831); see schedules.refine().",
)


def _schedule_kwargs_help(builder: Callable) -> list[str]:
    return [p for p in inspect.signature(builder).parameters if p not in _BUILDER_FIXED]


def make_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    num_training_steps: int,
    warmup: int | float = 0,
    **schedule_kwargs,
) -> ProfileScheduler:
    """Build a registered schedule for ``optimizer``.

    Args:
        name: a registered schedule (``hf_effi.available()["schedules"]``).
        optimizer: any ``torch.optim.Optimizer``; each param group keeps its own peak lr.
        num_training_steps: optimizer steps in the whole run (``> 0``).
        warmup: linear warmup as steps (``int``) or as a fraction of training (``float`` in ``[0, 1)``).
        **schedule_kwargs: the schedule's own arguments (e.g. ``floor``, ``decay_type``).

    Returns:
        A :class:`ProfileScheduler`, usable as the second element of Trainer's ``optimizers`` tuple.
    """
    entry = SCHEDULES.get(name)
    if isinstance(num_training_steps, bool) or not isinstance(num_training_steps, int) or num_training_steps <= 0:
        raise ValueError(f"num_training_steps must be a positive int, got {num_training_steps!r}")
    valid = _schedule_kwargs_help(entry.factory)
    unknown = [k for k in schedule_kwargs if k not in valid]
    if unknown:
        hints = [
            f"{k!r} (did you mean {closest_names(k, valid)[0]!r}?)" if closest_names(k, valid) else repr(k)
            for k in unknown
        ]
        raise ValueError(
            f"schedule {entry.name!r} got unknown argument(s) {', '.join(hints)}; "
            f"it accepts: {', '.join(valid) if valid else 'no arguments besides warmup'}"
        )
    num_warmup_steps = resolve_warmup(warmup, num_training_steps)
    if "peak_lr" in inspect.signature(entry.factory).parameters:
        group = optimizer.param_groups[0]
        schedule_kwargs["peak_lr"] = float(group.get("initial_lr", group["lr"]))
    built = entry.factory(num_training_steps=num_training_steps, num_warmup_steps=num_warmup_steps, **schedule_kwargs)
    profile, settings, extras = built if len(built) == 3 else (*built, {})
    return ProfileScheduler(
        optimizer,
        profile,
        name=entry.name,
        settings=settings,
        momentum=extras.get("momentum"),
        resumable=tuple(extras.get("resumable", ())),
    )
