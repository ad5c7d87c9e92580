"""The scheduler base every hf_effi schedule runs on: a pure ``step -> multiplier`` profile under a thin LRScheduler.

Why not ``LambdaLR``: its ``state_dict`` copies the ``__dict__`` of callable objects, so whatever a profile
carries ends up in the checkpoint. Here the profile is rebuilt from the constructor arguments and the state holds
only numbers (``last_epoch``, ``base_lrs``, ...), so ``torch.load(..., weights_only=True)`` (what Trainer uses on
resume) always works, and the arguments are recorded as plain numbers/strings for a checkpoint to be inspected.

A profile may also drive the momentum: ``momentum(step)`` gives the *absolute* ``beta1`` (Adam-type groups with
``betas``) or ``momentum`` (SGD-type groups) for every param group, as 1cycle does (Smith, arXiv 1803.09820). It is
rebuilt from the arguments like the lr profile, so the state stays numbers only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["ProfileScheduler"]

_NOT_STATE = ("optimizer", "profile", "momentum")


def _momentum_key(group: dict) -> str | None:
    if "betas" in group:
        return "betas"
    if "momentum" in group:
        return "momentum"
    return None


class ProfileScheduler(LRScheduler):
    """``lr_g(step) = base_lr_g * profile(step)`` for every param group ``g`` (per-group peak lrs are kept).

    Args:
        optimizer: the optimizer whose ``param_groups`` get the learning rate.
        profile: a picklable ``step -> multiplier`` callable (a :func:`functools.partial` of a profile function).
        name: the registered schedule name, recorded in the state for inspection.
        settings: the profile's arguments (numbers/strings), recorded in the state and checked on load.
        last_epoch: as in ``torch.optim.lr_scheduler``: ``-1`` starts a fresh schedule.
        momentum: an optional picklable ``step -> beta1/momentum`` callable (absolute values, not multipliers).
        resumable: names in ``settings`` that may differ when a checkpoint is loaded (e.g. ``num_training_steps``
            of a schedule that does not depend on it, or when to anneal an infinite schedule).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        profile: Callable[[int], float],
        *,
        name: str = "custom",
        settings: dict | None = None,
        last_epoch: int = -1,
        momentum: Callable[[int], float] | None = None,
        resumable: tuple[str, ...] | list[str] = (),
    ):
        self.profile = profile
        self.momentum = momentum
        self.name = name
        self.settings = dict(settings or {})
        self.resumable = sorted(resumable)
        if momentum is not None:
            lacking = [i for i, g in enumerate(optimizer.param_groups) if _momentum_key(g) is None]
            if lacking:
                raise ValueError(
                    f"schedule {name!r} drives the momentum, but param groups {lacking} of "
                    f"{type(optimizer).__name__} have neither 'betas' nor 'momentum'; use an Adam-type or SGD "
                    "optimizer, or turn momentum cycling off (e.g. cycle_momentum=False)"
                )
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        return float(self.profile(step))

    def get_lr(self) -> list[float]:
        m = self.multiplier(self.last_epoch)
        return [base_lr * m for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        if self.momentum is not None:
            value = float(self.momentum(self.last_epoch))
            for group in self.optimizer.param_groups:
                if _momentum_key(group) == "betas":
                    group["betas"] = (value, *tuple(group["betas"])[1:])
                else:
                    group["momentum"] = value

    def momentum_values(self, num_steps: int) -> list[float] | None:
        """beta1/momentum for steps ``0 .. num_steps - 1``, or ``None`` when the schedule leaves it alone."""
        return None if self.momentum is None else [float(self.momentum(s)) for s in range(num_steps)]

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_STATE}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("settings")
        free = set(self.resumable)
        changed = []
        if saved is not None and state_dict.get("name") == self.name:
            changed = sorted(
                k for k in set(saved) | set(self.settings) if k not in free and saved.get(k) != self.settings.get(k)
            )
        if changed:
            raise ValueError(
                f"The checkpoint's {self.name!r} schedule was built with different settings ({', '.join(changed)}): "
                f"saved {saved}, now {self.settings}. Resume with the same schedule arguments and num_training_steps."
            )
        # Resumable settings keep the values given now (e.g. a new anneal_from_step), not the checkpoint's.
        keep = {"settings": self.settings, "resumable": self.resumable}
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in _NOT_STATE})
        self.__dict__.update(keep)

    def values(self, num_steps: int) -> list[float]:
        """Multipliers for steps ``0 .. num_steps - 1`` (for plots and tests; the scheduler is not stepped)."""
        return [self.multiplier(s) for s in range(num_steps)]

    def plot(self, path: str | Path, num_steps: int, *, title: str | None = None) -> Path:
        """Write a PNG of the learning rate of the first param group over ``num_steps`` steps (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("ProfileScheduler.plot needs matplotlib: pip install 'hf_effi[dev]'") from e
        lrs = [self.base_lrs[0] * m for m in self.values(num_steps)]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(num_steps), lrs)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate")
        ax.set_title(title or self.name)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
