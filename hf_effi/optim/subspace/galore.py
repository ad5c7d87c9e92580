"""GaLore: Adam in the span of the gradient's top singular vectors.

Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", arXiv 2403.03507, Alg. 2:
every ``T`` steps ``P`` (``[s, r]``, orthonormal) <- top-``r`` left singular vectors of ``G``; then
``R = Pᵀ G`` (Eq. (5)), Adam on ``R`` (moments ``[r, l]``, not reset when ``P`` changes, as in the paper's code),
``N = M̂ / (sqrt(V̂) + eps)`` and ``ΔW = α P N`` (Eq. (6)); ``W <- W (1 - ηλ) - η ΔW``.

Choices (documented and tested):

- ``proj="randomized"`` (default) finds ``P`` with a randomized range finder with ``power_iterations`` power
  iterations (Halko et al., arXiv 0909.4061), seeded from the matrix name and refresh count; ``proj="svd"`` is the
  paper's exact SVD. On CPU the exact SVD of a 2048 x 5632 gradient takes tens of seconds, the range finder a
  fraction of that; with the default staggering the refreshes also spread over ``T`` steps.
- ``rank >= s`` (the short side) makes ``P`` the identity, not an orthogonal basis: Adam is not rotation-invariant,
  so only the identity makes GaLore(full rank, α = 1) equal AdamW; ``rank > s`` is refused.

Defaults are the paper's 60M setting: rank 128, ``T = 200``, ``α = 0.25``.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_effi.optim.factory import register_optimizer
from hf_effi.optim.subspace.base import SubspaceAdamW, _check_number, check_choice, check_positive_int
from hf_effi.optim.subspace.projectors import exact_svd_basis, randomized_range_finder

__all__ = ["GaLoreAdamW", "build_galore_adamw", "build_galore_adamw_8bit"]

PROJECTIONS = ("randomized", "svd")


class GaLoreAdamW(SubspaceAdamW):
    """GaLore-AdamW (arXiv 2403.03507); see the module docstring.

    Args:
        rank: subspace dimension ``r`` (``<=`` the short side of every target matrix).
        scale: ``α`` in Eq. (6).
        proj: ``"randomized"`` or ``"svd"``.
        power_iterations: for ``proj="randomized"``.
        **kwargs: :class:`SubspaceAdamW`'s (``lr``, ``betas``, ``eps``, ``weight_decay``, ``update_proj_gap``,
            ``stagger``, ``seed``).
    """

    method = "galore_adamw"

    def __init__(
        self,
        params: Any,
        *,
        rank: int = 128,
        scale: float = 0.25,
        proj: str = "randomized",
        power_iterations: int = 2,
        **kwargs: Any,
    ):
        check_positive_int(self.method, "rank", rank)
        _check_number(self.method, "scale", scale, low=0.0, low_inclusive=False)
        check_choice(self.method, "proj", proj, PROJECTIONS)
        if isinstance(power_iterations, bool) or not isinstance(power_iterations, int) or power_iterations < 0:
            raise ValueError(f"{self.method}: power_iterations must be an int >= 0, got {power_iterations!r}")
        super().__init__(params, rank=rank, scale=scale, proj=proj, power_iterations=power_iterations, **kwargs)

    def check_matrix(self, name: str, shape: tuple[int, int], group: dict) -> None:
        self.check_rank(name, shape, group["rank"])

    def is_identity(self, shape, group: dict) -> bool:
        return group["rank"] >= shape[0]

    def refresh(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict, seed: int) -> None:
        if group["proj"] == "svd":
            state["projector"] = exact_svd_basis(g, group["rank"])
        else:
            gen = torch.Generator().manual_seed(seed)
            state["projector"] = randomized_range_finder(
                g, group["rank"], generator=gen, power_iterations=group["power_iterations"]
            )

    def update(self, p: torch.Tensor, pv: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        if self.is_identity(g.shape, group):
            self.full_rank_adam(pv, g, state, group, group["scale"])
            return
        projector = state["projector"]
        low = projector.t() @ g  # Eq. (5): R = Pᵀ G, [r, l]
        direction = self.adam_direction(state, low, group)
        pv.add_((projector @ direction).to(pv.dtype), alpha=-group["lr"] * group["scale"])  # Eq. (6)


def build_galore_adamw(
    param_groups: list[dict],
    *,
    lr: float,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    proj: str = "randomized",
    power_iterations: int = 2,
    stagger: bool = True,
    seed: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> GaLoreAdamW:
    """GaLore-AdamW over ``param_groups`` (the ``target`` group is projected, the rest get AdamW)."""
    return GaLoreAdamW(
        param_groups,
        lr=lr,
        rank=rank,
        update_proj_gap=update_proj_gap,
        scale=scale,
        proj=proj,
        power_iterations=power_iterations,
        stagger=stagger,
        seed=seed,
        betas=betas,
        eps=eps,
    )


def build_galore_adamw_8bit(param_groups: list[dict], *, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """GaLore with 8-bit moments (arXiv 2403.03507, Sec. 4.3) needs bitsandbytes and CUDA parameters.

    hf_effi does not ship an 8-bit subspace Adam: this name exists so the request fails with a clear message
    instead of "unknown optimizer", pointing to what works on this setup.
    """
    import importlib.util

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    on_cuda = all(p.is_cuda for g in param_groups for p in g["params"])
    what = "bitsandbytes is not installed" if not has_bnb else "the parameters are not on CUDA"
    if has_bnb and on_cuda:
        what = "hf_effi has no 8-bit subspace Adam kernel yet"
    raise ValueError(
        f"galore_adamw_8bit is not available: {what}. Use 'galore_adamw' (float32 moments, the same projection; "
        "its rank-r state is already ~4x smaller than AdamW at rank d/4), or 'apollo_mini' for ~0 state."
    )


register_optimizer(
    "galore_adamw",
    build_galore_adamw,
    "GaLore (arXiv 2403.03507): Adam in the top-r gradient subspace, refreshed every T steps (staggered).",
    targets=True,
)
register_optimizer(
    "galore_adamw_8bit",
    build_galore_adamw_8bit,
    "GaLore with 8-bit moments: needs bitsandbytes + CUDA; without them a clear error.",
    targets=True,
)
