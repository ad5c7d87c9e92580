"""Grass: Adam on the rows of largest gradient norm (a sparse, structured projection).

Muhamed et al., "Grass: Compute Efficient Low-Memory LLM Training with Structured Sparse Gradients",
arXiv 2406.17660, Sec. 3: ``Pᵀ = ρB`` where ``B`` selects ``r`` rows; Adam on the ``[r, l]`` compressed gradient
``B G``, and the update ``ΔW = α Bᵀ N`` scattered back to those ``r`` rows only; ``P`` refreshed every ``K`` steps
and the Adam state reset.

Choices: the deterministic "Top-r" selection (rows of largest L2 norm, ``ρ = I``), on the short side; ``α = 0.25``
as GaLore (the paper trains with GaLore's setup); ``rank >= s`` is Adam on every row. The selected indices are
saved as an ``int64`` tensor. hf_effi receives the full gradient from autograd, so the paper's saving of never
materialising ``G`` does not apply here (only its optimizer-state saving does).
"""

from __future__ import annotations

from typing import Any

import torch

from hf_effi.optim.factory import register_optimizer
from hf_effi.optim.subspace.base import SubspaceAdamW, _check_number, check_positive_int
from hf_effi.optim.subspace.projectors import top_norm_rows

__all__ = ["GrassAdamW", "build_grass_adamw"]


class GrassAdamW(SubspaceAdamW):
    """Grass (arXiv 2406.17660) with Top-r row selection. Args: ``rank``, ``scale`` and :class:`SubspaceAdamW`'s."""

    method = "grass_adamw"

    def __init__(self, params: Any, *, rank: int = 128, scale: float = 0.25, **kwargs: Any):
        check_positive_int(self.method, "rank", rank)
        _check_number(self.method, "scale", scale, low=0.0, low_inclusive=False)
        super().__init__(params, rank=rank, scale=scale, **kwargs)

    def check_matrix(self, name: str, shape: tuple[int, int], group: dict) -> None:
        self.check_rank(name, shape, group["rank"])

    def is_identity(self, shape, group: dict) -> bool:
        return group["rank"] >= shape[0]

    def refresh(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict, seed: int) -> None:
        state["rows"] = top_norm_rows(g, group["rank"])
        self.reset_moments(state)

    def update(self, p: torch.Tensor, pv: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        if self.is_identity(g.shape, group):
            self.full_rank_adam(pv, g, state, group, group["scale"])
            return
        rows = state["rows"]
        direction = self.adam_direction(state, g.index_select(0, rows), group)  # Adam on B G, [r, l]
        pv.index_add_(0, rows, direction.to(pv.dtype), alpha=-group["lr"] * group["scale"])  # Bᵀ: scatter back


def build_grass_adamw(
    param_groups: list[dict],
    *,
    lr: float,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    stagger: bool = True,
    seed: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> GrassAdamW:
    """Grass over ``param_groups`` (the ``target`` group is row-selected, the rest get AdamW)."""
    return GrassAdamW(
        param_groups,
        lr=lr,
        rank=rank,
        update_proj_gap=update_proj_gap,
        scale=scale,
        stagger=stagger,
        seed=seed,
        betas=betas,
        eps=eps,
    )


register_optimizer(
    "grass_adamw",
    build_grass_adamw,
    "Grass (arXiv 2406.17660): Adam on the r rows of largest gradient norm, reselected every T steps.",
    targets=True,
)
