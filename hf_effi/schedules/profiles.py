"""Learning-rate profiles as pure functions of the step.

Each profile maps an optimizer step ``step`` (0-based; the lr used by the ``step``-th update) to a multiplier of
the peak learning rate. All share the same warmup convention as ``transformers.optimization``: during the first
``num_warmup_steps`` steps the multiplier rises linearly as ``step / num_warmup_steps`` (0 at step 0), so a
schedule built here and the transformers schedule of the same name agree step for step. After warmup the
profile is a function of the post-warmup progress ``p = (step - W) / (T - W)`` in ``[0, 1]``; ``p = 1`` (the
multiplier the scheduler reaches after the last update) is where decaying profiles hit their ``floor``.

Bind the keyword arguments with :func:`functools.partial` to get a picklable ``step -> multiplier`` callable.
"""

from __future__ import annotations

import math

__all__ = ["WSD_DECAY_TYPES", "constant", "cosine", "linear", "rex", "wsd"]

WSD_DECAY_TYPES = ("linear", "cosine", "1-sqrt", "exponential")


def _warmup(step: int, num_warmup_steps: int) -> float | None:
    """The warmup multiplier, or ``None`` once warmup is over."""
    if step < num_warmup_steps:
        return step / num_warmup_steps
    return None


def _progress(step: int, num_training_steps: int, num_warmup_steps: int) -> float:
    """Post-warmup progress in [0, 1]; steps past the end stay at 1."""
    span = max(1, num_training_steps - num_warmup_steps)
    return min(1.0, max(0.0, (step - num_warmup_steps) / span))


def constant(step: int, *, num_training_steps: int, num_warmup_steps: int = 0) -> float:
    """Warmup, then the peak learning rate for the rest of training."""
    w = _warmup(step, num_warmup_steps)
    return 1.0 if w is None else w


def linear(step: int, *, num_training_steps: int, num_warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Warmup, then linear decay from 1 to ``floor`` (a fraction of the peak).

    Linear decay to zero is the worst-case-optimal last-iterate schedule of Defazio et al., "When, Why and How
    Much? Adaptive Learning Rate Scheduling by Refinement" (arXiv 2310.07831).
    """
    w = _warmup(step, num_warmup_steps)
    if w is not None:
        return w
    p = _progress(step, num_training_steps, num_warmup_steps)
    return floor + (1.0 - floor) * (1.0 - p)


def cosine(step: int, *, num_training_steps: int, num_warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Warmup, then half a cosine from 1 to ``floor`` (Loshchilov & Hutter, SGDR, arXiv 1608.03983)."""
    w = _warmup(step, num_warmup_steps)
    if w is not None:
        return w
    p = _progress(step, num_training_steps, num_warmup_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def rex(
    step: int, *, num_training_steps: int, num_warmup_steps: int = 0, floor: float = 0.0, alpha: float = 0.5
) -> float:
    """REX: warmup, then ``(1 - p) / (1 - alpha * p)`` from 1 to ``floor``.

    Chen, Wolfe, Kyrillidis, "REX: Revisiting Budgeted Training with an Improved Schedule" (arXiv 2107.04197).
    The paper's profile is ``(1 - p) / (1/2 + (1 - p)/2)``, i.e. ``alpha = 0.5`` (the default here); a widely
    copied implementation uses ``alpha = 0.9``, which decays later and faster. ``alpha = 0`` is linear decay.
    """
    w = _warmup(step, num_warmup_steps)
    if w is not None:
        return w
    p = _progress(step, num_training_steps, num_warmup_steps)
    return floor + (1.0 - floor) * (1.0 - p) / (1.0 - alpha * p)


def wsd(
    step: int,
    *,
    num_training_steps: int,
    num_warmup_steps: int = 0,
    num_decay_steps: int,
    decay_type: str = "1-sqrt",
    floor: float = 0.0,
    half_life: float | None = None,
) -> float:
    """Warmup-Stable-Decay: warmup, constant peak, then a decay over the last ``num_decay_steps`` steps.

    Hu et al., "MiniCPM" (arXiv 2404.06395) introduced WSD with an exponential decay ``0.5 ** ((s - S) / half_life)``
    over ~10% of training; Hägele et al. (arXiv 2405.18392) found the ``1-sqrt`` cooldown best, hence the default.
    With ``q`` the progress through the decay window (0 at its first step, 1 after the last update):

    - ``linear``: ``1 - q``; ``cosine``: ``(1 + cos(pi q)) / 2``; ``1-sqrt``: ``1 - sqrt(q)``;
    - ``exponential``: ``0.5 ** (q * num_decay_steps / half_life)``, ``half_life`` defaulting to a fifth of the
      window (so the window ends at 1/32 of the peak). Like MiniCPM's it never reaches zero.

    Each shape is rescaled to run from 1 to ``floor`` (``exponential``: from 1 towards ``floor``).
    """
    w = _warmup(step, num_warmup_steps)
    if w is not None:
        return w
    decay_start = num_training_steps - num_decay_steps
    if step < decay_start:
        return 1.0
    q = min(1.0, (step - decay_start) / max(1, num_decay_steps))
    if decay_type == "linear":
        shape = 1.0 - q
    elif decay_type == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * q))
    elif decay_type == "1-sqrt":
        shape = 1.0 - math.sqrt(q)
    elif decay_type == "exponential":
        hl = half_life if half_life is not None else num_decay_steps / 5
        shape = 0.5 ** (q * num_decay_steps / hl)
    else:
        raise ValueError(f"decay_type={decay_type!r} is not one of {', '.join(WSD_DECAY_TYPES)}")
    return floor + (1.0 - floor) * shape
