"""GWT: Adam on the Haar approximation coefficients of the gradient, details normalised with the same variance.

Wen et al., "Breaking Memory Limits: Gradient Wavelet Transform Enhances LLMs Training", arXiv 2501.07237,
Sec. 3 / Alg. 1: ``[A, D] = Haar(G)`` along one axis (:func:`haar_forward`, ``levels`` levels); Adam moments are
kept only for ``A`` (``[s, l / 2^levels]``): ``Ã = M̂ / (sqrt(V̂) + eps)``; the details get no state and are
divided by the same denominator, ``D̃ = D / (sqrt(V̂) + eps)``; ``ΔW = α · Haar⁻¹(Ã, D̃)``.

Choices: the transform runs along the long side of the matrix; with several levels, a detail coefficient is
divided by the denominator of the approximation coefficient that covers the same columns (``repeat_interleave``).
The long side must be divisible by ``2^levels`` (checked at construction). There is no projection to refresh.
Defaults: ``levels = 2`` (state 2 B/param), ``α = 0.25``.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_effi.optim.factory import register_optimizer
from hf_effi.optim.subspace.base import SubspaceAdamW, _check_number, check_positive_int
from hf_effi.optim.subspace.wavelet import haar_forward, haar_inverse

__all__ = ["GWTAdamW", "build_gwt_adamw"]


class GWTAdamW(SubspaceAdamW):
    """GWT-Adam (arXiv 2501.07237). Args: ``levels`` (Haar levels, >= 1), ``scale`` (``α``), and
    :class:`SubspaceAdamW`'s (``update_proj_gap`` and ``stagger`` have no effect: the transform is fixed)."""

    method = "gwt_adamw"
    refreshes = False

    def __init__(self, params: Any, *, levels: int = 2, scale: float = 0.25, **kwargs: Any):
        check_positive_int(self.method, "levels", levels)
        _check_number(self.method, "scale", scale, low=0.0, low_inclusive=False)
        super().__init__(params, levels=levels, scale=scale, **kwargs)

    def check_matrix(self, name: str, shape: tuple[int, int], group: dict) -> None:
        levels, long_side = group["levels"], shape[1]
        if long_side % (2**levels):
            fits = max((k for k in range(1, levels) if long_side % (2**k) == 0), default=0)
            fix = f"pass levels<={fits}" if fits else "leave it out with target_modules"
            raise ValueError(
                f"{self.method}: levels={levels} needs the long side of target matrix {name!r} (oriented shape "
                f"{shape}) divisible by 2**{levels} = {2**levels}; {fix}"
            )

    def update(self, p: torch.Tensor, pv: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        levels = group["levels"]
        approx, details = haar_forward(g, levels)
        exp_avg, denom, bias_correction1 = self.adam_moments(state, approx, group)
        approx_dir = (exp_avg / denom).div_(bias_correction1)
        # details[k] is level k + 1: one approximation coefficient covers 2**(levels - k - 1) of its entries
        detail_dirs = [d / denom.repeat_interleave(2 ** (levels - k - 1), dim=-1) for k, d in enumerate(details)]
        update = haar_inverse(approx_dir, detail_dirs)
        pv.add_(update.to(pv.dtype), alpha=-group["lr"] * group["scale"])


def build_gwt_adamw(
    param_groups: list[dict],
    *,
    lr: float,
    levels: int = 2,
    scale: float = 0.25,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> GWTAdamW:
    """GWT-Adam over ``param_groups`` (the ``target`` group is transformed, the rest get AdamW)."""
    return GWTAdamW(param_groups, lr=lr, levels=levels, scale=scale, betas=betas, eps=eps)


register_optimizer(
    "gwt_adamw",
    build_gwt_adamw,
    "GWT (arXiv 2501.07237): Adam on Haar approximation coefficients (levels=2: 2 B/param), no SVD.",
    targets=True,
)
