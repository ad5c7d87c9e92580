"""A base for optimizers whose update is one function of one parameter (CAME, LAMB, LARS, ...)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["PerParameterOptimizer"]


class PerParameterOptimizer(torch.optim.Optimizer):
    """``step()`` calls ``self._update(p, group)`` for every parameter that has a gradient; subclasses write only
    ``_update``, so the closure and group loop live in one place."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must define _update(p, group)")
