"""Schedule-free AdamW and SGD: Defazio et al., "The Road Less Scheduled", arXiv 2405.15682.

Schedule-free methods replace the decaying learning-rate schedule with an average. Three sequences (the paper's main
update, stated first for SGD; Alg. 1 for the AdamW variant):

* ``z_{t+1} = z_t - gamma_t * d_t`` (the base optimizer's step, with ``d_t`` the gradient for SGD or the
  Adam-normalised gradient for AdamW, taken at ``y_t``, plus weight decay ``lambda * y_t``);
* ``x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}`` with ``c_{t+1} = w_{t+1} / sum_{i<=t+1} w_i`` and weights
  ``w_t = t**r * max_{i<=t} gamma_i ** weight_lr_power`` (Alg. 1, ``r = 0``, power 2 by default);
* ``y_t = (1 - beta) z_t + beta x_t``: the point where gradients are evaluated.

The model's parameters hold ``y`` in *train mode* and ``x`` (the averaged weights, the ones to evaluate and ship)
in *eval mode*; ``z`` is the optimizer state. :meth:`train` and :meth:`eval` switch between the two in place:
``x = (y - (1 - beta) z) / beta`` and ``y = (1 - beta) z + beta x``. ``y`` is updated directly from ``y_t``, ``z_t``
and ``d_t`` (expand the three equations: ``y_{t+1} = (1 - c) y_t + c z_t + gamma (beta (1 - c) - 1) d_t``), so only
``z`` (and Adam's ``v``) is stored: AdamW-SF keeps 8 bytes/param like AdamW, SGD-SF 4.

Trainer calls ``optimizer.train()`` before every training step and ``optimizer.eval()`` before evaluating, but not
before saving a checkpoint; :class:`hf_effi.trainers.EffiTrainer` switches to eval mode around every save, so saved
weights are ``x`` and a resumed run continues exactly (the mode is part of ``state_dict()``). In a hand-written loop
use :func:`evaluation_weights` around saving and evaluation.

Learning rate: warmup is recommended (an external ``constant`` schedule with ``warmup``, or ``warmup_steps`` here);
any decay defeats the method. A decrease of a group's learning rate after warmup raises at ``step()``, and
EffiTrainer refuses a decaying schedule at construction. Choices where the paper leaves room: AdamW's ``gamma_t``
includes Adam's bias correction ``sqrt(1 - beta2**t)`` (as in the authors' code); ``max gamma`` in ``w_t`` runs over
those corrected values; weight decay is taken at ``y`` (Alg. 1).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from hf_effi.optim.factory import register_optimizer

__all__ = [
    "SCHEDULE_FREE_OPTIMIZERS",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "build_schedule_free_adamw",
    "build_schedule_free_sgd",
    "evaluation_weights",
    "is_schedule_free",
]


# The registered names, for code that must know before the optimizer exists (EffiTrainer's schedule check).
SCHEDULE_FREE_OPTIMIZERS = ("schedule_free_adamw", "schedule_free_sgd")


def _check_number(value: Any, name: str, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


class _ScheduleFree(torch.optim.Optimizer):
    """Shared mode switching, weighting and learning-rate checks of the schedule-free optimizers.

    Subclasses define ``_direction(p, grad, group, k)``: the base optimizer's step direction ``d_t`` (a new tensor).
    """

    # Read by code that pairs optimizers with schedules (e.g. hf_effi.make): only a constant lr after warmup fits.
    requires_constant_schedule = True

    def __init__(self, params: Any, defaults: dict[str, Any]):
        _check_number(defaults["lr"], "lr", 0.0, math.inf, low_open=True)
        _check_number(defaults["momentum"], "momentum (beta)", 0.0, 1.0, low_open=True)
        _check_number(defaults["weight_decay"], "weight_decay", 0.0, math.inf)
        _check_number(defaults["r"], "r", 0.0, math.inf)
        _check_number(defaults["weight_lr_power"], "weight_lr_power", 0.0, math.inf)
        warmup = defaults["warmup_steps"]
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup!r}")
        defaults = {**defaults, "train_mode": True, "k": 0, "lr_max": 0.0, "weight_sum": 0.0, "lr_peak_seen": 0.0}
        super().__init__(params, defaults)

    def _z(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "z" not in state:
            state["z"] = p.detach().clone(memory_format=torch.preserve_format)
        return state["z"]

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters <- ``x = (y - (1 - beta) z) / beta`` (the averaged weights). Idempotent."""
        for group in self.param_groups:
            if group["train_mode"]:
                beta = group["momentum"]
                for p in group["params"]:
                    if "z" in self.state[p]:
                        p.lerp_(self.state[p]["z"], 1.0 - 1.0 / beta)
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Parameters <- ``y = (1 - beta) z + beta x`` (where gradients are taken). Idempotent."""
        for group in self.param_groups:
            if not group["train_mode"]:
                beta = group["momentum"]
                for p in group["params"]:
                    if "z" in self.state[p]:
                        p.lerp_(self.state[p]["z"], 1.0 - beta)
                group["train_mode"] = True

    @property
    def train_mode(self) -> bool:
        return all(g["train_mode"] for g in self.param_groups)

    def _step_size(self, group: dict[str, Any]) -> tuple[float, float]:
        """``(gamma_t, c_{t+1})`` for this step; checks the schedule did not decay (Alg. 1 weights)."""
        if not group["train_mode"]:
            raise RuntimeError(
                "schedule-free step() in eval mode: the parameters hold the averaged x, not y where gradients must be "
                "taken. Call optimizer.train() before the forward pass (Trainer does this in training_step)."
            )
        lr = group["lr"]
        if lr < group["lr_peak_seen"] * (1.0 - 1e-12):
            raise ValueError(
                f"schedule-free optimizers need a constant learning rate after warmup, but the scheduled lr fell from "
                f"{group['lr_peak_seen']} to {lr}: the averaging replaces the decay. Use schedule='constant' (with "
                "warmup) in hf_effi.make, effi_schedule='constant' or lr_scheduler_type='constant_with_warmup'."
            )
        group["lr_peak_seen"] = max(group["lr_peak_seen"], lr)
        k = group["k"]
        warm = min(1.0, (k + 1) / group["warmup_steps"]) if group["warmup_steps"] else 1.0
        gamma = lr * warm * self._lr_correction(group, k)
        group["lr_max"] = max(group["lr_max"], gamma)
        weight = (k + 1) ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
        group["weight_sum"] += weight
        c = weight / group["weight_sum"] if group["weight_sum"] > 0 else 0.0
        group["k"] = k + 1
        return gamma, c

    def _lr_correction(self, group: dict[str, Any], k: int) -> float:
        return 1.0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            k = group["k"]
            gamma, c = self._step_size(group)
            beta, wd = group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                z = self._z(p)
                d = self._direction(p, p.grad, group, k)
                if wd:
                    d.add_(p, alpha=wd)  # weight decay at y (Alg. 1)
                # y_{t+1} = (1 - c) y_t + c z_t + gamma (beta (1 - c) - 1) d_t ; then z_{t+1} = z_t - gamma d_t
                p.lerp_(z, c)
                p.add_(d, alpha=gamma * (beta * (1.0 - c) - 1.0))
                z.sub_(d, alpha=gamma)
        return loss


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW (arXiv 2405.15682, Alg. 1): ``d_t = g_t / (sqrt(v_t) + eps)``,
    ``v_t = beta2 v_{t-1} + (1 - beta2) g_t**2``, ``gamma_t = lr * sqrt(1 - beta2**t)``.

    State per parameter: ``z`` and ``exp_avg_sq`` (each the parameter's shape and dtype).

    Args:
        lr: the constant learning rate (``0.0025`` in the paper's defaults; typical LLM values are AdamW's x1-10).
        betas: ``(beta, beta2)``: the interpolation ``beta`` of ``y_t`` (``0.9``) and Adam's ``beta2``.
        eps, weight_decay: as in AdamW (decay taken at ``y``).
        warmup_steps: a linear warmup inside the optimizer (``0``: use an external warmup schedule instead).
        r, weight_lr_power: the averaging weights ``w_t = t**r * max gamma ** weight_lr_power``.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
    ):
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta, beta2) like (0.9, 0.999), got {betas!r}")
        _check_number(betas[1], "betas[1]", 0.0, 1.0)
        if betas[1] == 1.0:
            raise ValueError("betas[1] must be < 1 (Adam's second-moment decay), got 1.0")
        _check_number(eps, "eps", 0.0, math.inf)
        defaults = dict(lr=lr, momentum=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay)
        defaults.update(warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)
        super().__init__(params, defaults)

    def _lr_correction(self, group: dict[str, Any], k: int) -> float:
        return math.sqrt(1.0 - group["beta2"] ** (k + 1))

    def _direction(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], k: int) -> torch.Tensor:
        state = self.state[p]
        if "exp_avg_sq" not in state:
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        v = state["exp_avg_sq"]
        v.mul_(group["beta2"]).addcmul_(grad, grad, value=1.0 - group["beta2"])
        return grad / v.sqrt().add_(group["eps"])


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD (arXiv 2405.15682, the three-sequence update with ``d_t = g_t``). State per parameter: ``z``.

    Args as in :class:`ScheduleFreeAdamW`, with ``momentum`` the interpolation ``beta`` (``0.9``).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
    ):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        defaults.update(warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)
        super().__init__(params, defaults)

    def _direction(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], k: int) -> torch.Tensor:
        return grad.clone()


def is_schedule_free(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the optimizer inside accelerate's wrapper) is a schedule-free optimizer."""
    return isinstance(getattr(optimizer, "optimizer", optimizer), _ScheduleFree)


@contextlib.contextmanager
def evaluation_weights(optimizer: Any) -> Iterator[None]:
    """Inside the block the model holds the averaged weights ``x`` (eval mode); afterwards the previous mode.

    Use it around saving and evaluation in hand-written loops; a no-op for other optimizers.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, _ScheduleFree):
        yield
        return
    was_training = inner.train_mode
    inner.eval()
    try:
        yield
    finally:
        if was_training:
            inner.train()


def build_schedule_free_adamw(
    param_groups: list[dict],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
) -> ScheduleFreeAdamW:
    """:class:`ScheduleFreeAdamW` over hf_effi's param groups (their ``weight_decay`` applies)."""
    return ScheduleFreeAdamW(
        param_groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        warmup_steps=warmup_steps,
        r=r,
        weight_lr_power=weight_lr_power,
    )


def build_schedule_free_sgd(
    param_groups: list[dict],
    *,
    lr: float,
    momentum: float = 0.9,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
) -> ScheduleFreeSGD:
    """:class:`ScheduleFreeSGD` over hf_effi's param groups (their ``weight_decay`` applies)."""
    return ScheduleFreeSGD(
        param_groups, lr=lr, momentum=momentum, warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power
    )


_HOW = "needs optimizer.train()/eval() (EffiTrainer also switches to eval weights before each save); constant lr."
register_optimizer(
    "schedule_free_adamw", build_schedule_free_adamw, f"Schedule-free AdamW (Defazio et al.): {_HOW}", layerwise=False
)
register_optimizer(
    "schedule_free_sgd", build_schedule_free_sgd, f"Schedule-free SGD (Defazio et al.): {_HOW}", layerwise=False
)
