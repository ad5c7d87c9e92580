"""Fira: GaLore plus a scaled full-rank residual, with a norm-growth limiter.

Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?", arXiv 2410.01623,
Sec. 4: with GaLore's ``P`` (``[s, r]``), ``R = Pᵀ G`` and Adam's ``N = M̂ / (sqrt(V̂) + eps)`` on ``R``,

- Eq. (7)-(8): the residual ``G - P R`` that GaLore drops is scaled column by column by
  ``φ_j = ‖N[:, j]‖ / ‖R[:, j]‖`` (Adam's effect on that column, read off the low-rank part): ``S = (G - P R) φ``;
- Eq. (9), the norm-growth limiter: if ``‖S_t‖ / ‖S_{t-1}‖ > γ`` (``γ = 1.01``), ``S_t`` is rescaled so the ratio
  is ``γ``; the only extra state is ``‖S_{t-1}‖`` (a 0-d tensor);
- ``ΔW = α (P N + S)``.

Choice: ``α`` multiplies both terms (the paper states ``ΔW = P N + S`` with the GaLore scale left implicit); the
``1e-8`` in ``φ``'s denominator is the official code's. Defaults: rank 128, ``T = 200``, ``α = 0.25``, ``γ = 1.01``.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_effi.optim.factory import register_optimizer
from hf_effi.optim.subspace.base import _check_number
from hf_effi.optim.subspace.galore import GaLoreAdamW

__all__ = ["FiraAdamW", "build_fira_adamw"]


class FiraAdamW(GaLoreAdamW):
    """Fira-AdamW (arXiv 2410.01623). Args as :class:`GaLoreAdamW`, plus ``norm_growth_limit`` (``γ``, > 1)."""

    method = "fira_adamw"

    def __init__(self, params: Any, *, norm_growth_limit: float = 1.01, **kwargs: Any):
        _check_number(self.method, "norm_growth_limit", norm_growth_limit, low=1.0, low_inclusive=False)
        super().__init__(params, norm_growth_limit=norm_growth_limit, **kwargs)

    def update(self, p: torch.Tensor, pv: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        if self.is_identity(g.shape, group):  # the residual is zero
            self.full_rank_adam(pv, g, state, group, group["scale"])
            return
        projector = state["projector"]
        low = projector.t() @ g
        direction = self.adam_direction(state, low, group)
        phi = torch.linalg.vector_norm(direction, dim=0) / (torch.linalg.vector_norm(low, dim=0) + 1e-8)  # Eq. (8)
        residual = (g - projector @ low).mul_(phi)  # Eq. (7), [s, l]
        residual = self.limit_norm_growth(residual, state, group["norm_growth_limit"], key="residual_norm")  # Eq. (9)
        update = residual.addmm_(projector, direction)
        pv.add_(update.to(pv.dtype), alpha=-group["lr"] * group["scale"])


def build_fira_adamw(
    param_groups: list[dict],
    *,
    lr: float,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    norm_growth_limit: float = 1.01,
    proj: str = "randomized",
    power_iterations: int = 2,
    stagger: bool = True,
    seed: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> FiraAdamW:
    """Fira-AdamW over ``param_groups`` (the ``target`` group is projected, the rest get AdamW)."""
    return FiraAdamW(
        param_groups,
        lr=lr,
        rank=rank,
        update_proj_gap=update_proj_gap,
        scale=scale,
        norm_growth_limit=norm_growth_limit,
        proj=proj,
        power_iterations=power_iterations,
        stagger=stagger,
        seed=seed,
        betas=betas,
        eps=eps,
    )


register_optimizer(
    "fira_adamw",
    build_fira_adamw,
    "Fira (arXiv 2410.01623): GaLore + norm-scaled full-rank residual with a growth limiter; GaLore's state.",
    targets=True,
)
