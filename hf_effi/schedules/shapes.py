"""Decay shapes and argument checks shared by the phase-based schedules (power, infinite, rewarm).

Each shape maps the progress ``q`` through a decay window (0 at its first step, 1 after its last update) to a value
falling from 1; :func:`decay_to` rescales it to end at a floor.
"""

from __future__ import annotations

import math

__all__ = ["DECAY_TYPES", "check_fraction", "decay_shape", "decay_to", "steps_from"]

DECAY_TYPES = ("linear", "cosine", "1-sqrt", "exponential")


def check_fraction(name: str, value: float, *, what: str = "a fraction of the peak learning rate") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is {what} and must be a number in [0, 1]")


def steps_from(name: str, value: int | float, num_training_steps: int) -> int:
    """An int is a number of steps; a float in ``[0, 1]`` a fraction of ``num_training_steps`` (rounded up)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an int (steps) or a float in [0, 1] (fraction of training), got {value!r}")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} is a float, so a fraction of training, and must be in [0, 1]")
        return math.ceil(value * num_training_steps)
    if value < 0:
        raise ValueError(f"{name}={value} must be >= 0 steps")
    return value


def decay_shape(q: float, decay_type: str, num_decay_steps: int = 1, half_life: float | None = None) -> float:
    """``linear``: ``1 - q``; ``cosine``: ``(1 + cos(pi q)) / 2``; ``1-sqrt``: ``1 - sqrt(q)``; ``exponential``:
    ``0.5 ** (q * num_decay_steps / half_life)`` with ``half_life`` a fifth of the window by default (MiniCPM's
    decay, arXiv 2404.06395; it ends at 1/32 and never reaches 0)."""
    q = min(1.0, max(0.0, q))
    if decay_type == "linear":
        return 1.0 - q
    if decay_type == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    if decay_type == "1-sqrt":
        return 1.0 - math.sqrt(q)
    if decay_type == "exponential":
        hl = half_life if half_life is not None else num_decay_steps / 5
        return 0.5 ** (q * num_decay_steps / hl)
    raise ValueError(f"decay_type={decay_type!r} is not one of {', '.join(DECAY_TYPES)}")


def decay_to(start: float, floor: float, q: float, decay_type: str, num_decay_steps: int = 1) -> float:
    """From ``start`` down to ``floor`` along ``decay_type``; ``exponential`` here is geometric (``start *
    (floor / start) ** q``), which reaches the floor exactly when the floor is above 0."""
    q = min(1.0, max(0.0, q))
    if decay_type == "exponential" and floor > 0.0:
        return start * (floor / start) ** q
    return floor + (start - floor) * decay_shape(q, decay_type, num_decay_steps)
