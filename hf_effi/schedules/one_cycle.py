"""1cycle: lr up then down, momentum (or Adam's beta1) down then up, in inverse phase.

Smith, "A disciplined approach to neural network hyper-parameters: Part 1" (arXiv 1803.09820), with the defaults
and phase boundaries of ``torch.optim.lr_scheduler.OneCycleLR`` (so the two agree step for step, tested): the lr
rises from ``peak / div_factor`` to the peak over the first ``pct_start`` of training and anneals to
``peak / (div_factor * final_div_factor)``; the momentum goes ``max_momentum -> base_momentum -> max_momentum``.
The peak is the optimizer's learning rate (the scheduler multiplies it).
"""

from __future__ import annotations

import functools
import math

from hf_effi.schedules.shapes import check_fraction

__all__ = ["build_one_cycle", "one_cycle_lr", "one_cycle_momentum"]

ANNEAL_STRATEGIES = ("cos", "linear")


def _anneal(start: float, end: float, pct: float, strategy: str) -> float:
    pct = min(1.0, max(0.0, pct))
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
    return (end - start) * pct + start


def _phases(num_training_steps: int, pct_start: float, three_phase: bool) -> list[float]:
    """End step of each phase, as OneCycleLR computes them (``pct * T - 1``, ...)."""
    if three_phase:
        return [pct_start * num_training_steps - 1, 2 * pct_start * num_training_steps - 2, num_training_steps - 1]
    return [pct_start * num_training_steps - 1, num_training_steps - 1]


def _interpolate(step: int, ends: list[float], values: list[tuple[float, float]], strategy: str) -> float:
    start_step = 0.0
    for i, end_step in enumerate(ends):
        if step <= end_step or i == len(ends) - 1:
            pct = (step - start_step) / (end_step - start_step)
            return _anneal(values[i][0], values[i][1], pct, strategy)
        start_step = end_step
    raise ValueError(f"step={step} is outside every phase {ends}")  # unreachable: the last phase takes the rest


def one_cycle_lr(
    step: int,
    *,
    num_training_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
    three_phase: bool = False,
) -> float:
    """The lr multiplier of the peak (Smith 2018, Sec. 4.1: "1cycle"); steps past the end stay at the minimum."""
    initial = 1.0 / div_factor
    minimum = initial / final_div_factor
    ends = _phases(num_training_steps, pct_start, three_phase)
    values = [(initial, 1.0), (1.0, initial), (initial, minimum)] if three_phase else [(initial, 1.0), (1.0, minimum)]
    return _interpolate(step, ends, values, anneal_strategy)


def one_cycle_momentum(
    step: int,
    *,
    num_training_steps: int,
    pct_start: float = 0.3,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    anneal_strategy: str = "cos",
    three_phase: bool = False,
) -> float:
    """The absolute momentum / beta1, cycled inversely to the lr (Smith 2018, Sec. 4.2 "cyclical momentum")."""
    ends = _phases(num_training_steps, pct_start, three_phase)
    lo, hi = base_momentum, max_momentum
    values = [(hi, lo), (lo, hi), (hi, hi)] if three_phase else [(hi, lo), (lo, hi)]
    return _interpolate(step, ends, values, anneal_strategy)


def build_one_cycle(
    *,
    num_training_steps: int,
    num_warmup_steps: int,
    pct_start: float | None = None,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
    three_phase: bool = False,
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
):
    """``pct_start`` defaults to ``warmup / num_training_steps`` when a warmup is given, else 0.3 (torch's)."""
    if pct_start is not None and num_warmup_steps > 0:
        raise ValueError(
            f"one_cycle got both warmup ({num_warmup_steps} steps) and pct_start={pct_start}; both set the rising "
            "phase, so pass only one"
        )
    if pct_start is None:
        pct_start = num_warmup_steps / num_training_steps if num_warmup_steps > 0 else 0.3
    check_fraction("pct_start", pct_start, what="the fraction of training spent raising the lr")
    if three_phase and pct_start > 0.5:
        raise ValueError(f"pct_start={pct_start} must be <= 0.5 with three_phase=True (up and down take 2 * pct_start)")
    if pct_start * num_training_steps - 1 <= 0:
        raise ValueError(
            f"pct_start={pct_start} of num_training_steps={num_training_steps} leaves no rising phase "
            f"(pct_start * num_training_steps must exceed 1); raise pct_start or train longer"
        )
    if div_factor <= 0 or final_div_factor <= 0:
        raise ValueError(f"div_factor={div_factor} and final_div_factor={final_div_factor} must be > 0")
    if anneal_strategy not in ANNEAL_STRATEGIES:
        raise ValueError(f"anneal_strategy={anneal_strategy!r} is not one of {', '.join(ANNEAL_STRATEGIES)}")
    check_fraction("base_momentum", base_momentum, what="a momentum / beta1")
    check_fraction("max_momentum", max_momentum, what="a momentum / beta1")
    if base_momentum > max_momentum:
        raise ValueError(f"base_momentum={base_momentum} must be <= max_momentum={max_momentum}")
    common = dict(
        num_training_steps=num_training_steps,
        pct_start=float(pct_start),
        anneal_strategy=anneal_strategy,
        three_phase=bool(three_phase),
    )
    profile = functools.partial(
        one_cycle_lr, div_factor=float(div_factor), final_div_factor=float(final_div_factor), **common
    )
    settings = dict(
        common,
        div_factor=float(div_factor),
        final_div_factor=float(final_div_factor),
        cycle_momentum=bool(cycle_momentum),
    )
    extras = {}
    if cycle_momentum:
        extras["momentum"] = functools.partial(
            one_cycle_momentum, base_momentum=float(base_momentum), max_momentum=float(max_momentum), **common
        )
        settings.update(base_momentum=float(base_momentum), max_momentum=float(max_momentum))
    return profile, settings, extras
