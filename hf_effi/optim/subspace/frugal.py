"""FRUGAL: Adam on a state-full block of coordinates, state-free signSGD on the rest.

Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
arXiv 2411.07837, Alg. 1: split the gradient into ``g_full = P(g)`` and ``g_free = g - P⁻¹(P(g))``; Adam on
``g_full`` and signSGD on ``g_free``:
``θ <- θ - η · scale · P⁻¹(Adam(g_full)) - η · free_lr_scale · sign(g_free)``.
Every ``T`` steps the state-full subspace is redrawn and its Adam statistics are reset.

Choice: ``P`` selects ``round(density · s)`` of the ``s`` rows of the short side, uniformly at random from a seed
(the paper's coordinate/column projection; no SVD, no projection matrix). The row indices are saved as an
``int64`` tensor. ``density = 1`` is plain AdamW on the matrix. Defaults: ``density = 0.25``, ``T = 200``,
``free_lr_scale = 1`` (the paper's pretraining setting; it uses 0.1 for fine-tuning), ``scale = 1``.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_effi.optim.factory import register_optimizer
from hf_effi.optim.subspace.base import SubspaceAdamW, _check_number
from hf_effi.optim.subspace.projectors import random_rows

__all__ = ["FrugalAdamW", "build_frugal"]


def state_full_rows(density: float, s: int) -> int:
    """How many of ``s`` rows keep Adam state at ``density`` (at least one)."""
    return max(1, min(s, round(density * s)))


class FrugalAdamW(SubspaceAdamW):
    """FRUGAL with Adam (state-full) and signSGD (state-free) (arXiv 2411.07837); see the module docstring.

    Args:
        density: fraction ``ρ`` of each target matrix's rows (short side) that get Adam state, in ``(0, 1]``.
        scale: multiplies the state-full update.
        free_lr_scale: multiplies the learning rate of the signSGD part.
        **kwargs: :class:`SubspaceAdamW`'s.
    """

    method = "frugal"

    def __init__(
        self, params: Any, *, density: float = 0.25, scale: float = 1.0, free_lr_scale: float = 1.0, **kwargs: Any
    ):
        _check_number(self.method, "density", density, low=0.0, low_inclusive=False, high=1.0)
        _check_number(self.method, "scale", scale, low=0.0, low_inclusive=False)
        _check_number(self.method, "free_lr_scale", free_lr_scale, low=0.0, low_inclusive=True)
        super().__init__(params, density=density, scale=scale, free_lr_scale=free_lr_scale, **kwargs)

    def is_identity(self, shape, group: dict) -> bool:
        return state_full_rows(group["density"], shape[0]) >= shape[0]

    def refresh(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict, seed: int) -> None:
        state["rows"] = random_rows(g.shape[0], state_full_rows(group["density"], g.shape[0]), seed, device=g.device)
        self.reset_moments(state)

    def update(self, p: torch.Tensor, pv: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        if self.is_identity(g.shape, group):
            self.full_rank_adam(pv, g, state, group, group["scale"])
            return
        rows = state["rows"]
        direction = self.adam_direction(state, g.index_select(0, rows), group)  # Adam on g_full
        free = torch.sign(g).index_fill_(0, rows, 0.0)  # sign(g_free): zero on the state-full rows
        pv.add_(free.to(pv.dtype), alpha=-group["lr"] * group["free_lr_scale"])
        pv.index_add_(0, rows, direction.to(pv.dtype), alpha=-group["lr"] * group["scale"])


def build_frugal(
    param_groups: list[dict],
    *,
    lr: float,
    density: float = 0.25,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    free_lr_scale: float = 1.0,
    stagger: bool = True,
    seed: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> FrugalAdamW:
    """FRUGAL over ``param_groups`` (the ``target`` group is split, the rest get AdamW)."""
    return FrugalAdamW(
        param_groups,
        lr=lr,
        density=density,
        update_proj_gap=update_proj_gap,
        scale=scale,
        free_lr_scale=free_lr_scale,
        stagger=stagger,
        seed=seed,
        betas=betas,
        eps=eps,
    )


register_optimizer(
    "frugal",
    build_frugal,
    "FRUGAL (arXiv 2411.07837): Adam on a random 25% of rows (resampled every T steps), signSGD on the rest.",
    targets=True,
)
