"""Baseline optimizers every hf_effi method is measured against: torch's AdamW, SGD and Adafactor."""

from __future__ import annotations

import torch

from hf_effi.optim.factory import register_optimizer

__all__ = ["build_adafactor", "build_adamw", "build_sgd"]


def _all_plain_cuda(param_groups: list[dict]) -> bool:
    from torch.distributed.tensor import DTensor

    params = [p for g in param_groups for p in g["params"]]
    return bool(params) and all(p.is_cuda and not isinstance(p, DTensor) and p.is_floating_point() for p in params)


def _refuse_sharded_matrices(param_groups: list[dict]) -> None:
    from torch.distributed.tensor import DTensor, Shard

    for g in param_groups:
        names = g.get("param_names") or [f"parameter {i}" for i in range(len(g["params"]))]
        for name, p in zip(names, g["params"]):
            if not isinstance(p, DTensor) or p.ndim < 2:
                continue
            if any(isinstance(pl, Shard) and pl.dim % p.ndim >= p.ndim - 2 for pl in p.placements):
                raise ValueError(
                    f"adafactor cannot optimize {name!r}: it is a DTensor sharded along a matrix dimension "
                    f"({p.placements}, e.g. by FSDP2 fully_shard), and torch's Adafactor computes its row/column "
                    "statistics with in-place ops DTensor shards do not support. Use 'adamw' or 'sgd' with FSDP, "
                    "or Adafactor without sharding."
                )


def build_adamw(
    param_groups: list[dict],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    amsgrad: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """torch's AdamW (Loshchilov & Hutter, arXiv 1711.05101); fused kernel by default when every parameter is a
    plain CUDA tensor (what Trainer's ``adamw_torch_fused`` default does), torch's own choice otherwise."""
    if fused is None and foreach is None and _all_plain_cuda(param_groups):
        fused = True
    return torch.optim.AdamW(
        param_groups, lr=lr, betas=tuple(betas), eps=eps, amsgrad=amsgrad, foreach=foreach, fused=fused
    )


def build_sgd(
    param_groups: list[dict],
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    foreach: bool | None = None,
) -> torch.optim.SGD:
    """torch's SGD (optionally with heavy-ball or Nesterov momentum); weight decay is L2 (coupled), as in torch."""
    return torch.optim.SGD(
        param_groups, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, foreach=foreach
    )


def build_adafactor(
    param_groups: list[dict],
    *,
    lr: float,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    foreach: bool | None = None,
) -> torch.optim.Adafactor:
    """torch's Adafactor (Shazeer & Stern, arXiv 1804.04235): factored second moment, no first moment.

    The learning rate is the external one (no relative step size), so hf_effi schedules drive it like any other.

    Raises:
        ValueError: for a matrix sharded along one of its last two dims (FSDP2's ``fully_shard`` shards dim 0):
            torch's Adafactor reduces over rows and columns in place, which DTensor shards cannot do.
    """
    _refuse_sharded_matrices(param_groups)
    return torch.optim.Adafactor(param_groups, lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d, foreach=foreach)


register_optimizer("adamw", build_adamw, "torch AdamW (decoupled weight decay); fused on CUDA. The baseline.")
register_optimizer("sgd", build_sgd, "torch SGD with optional momentum / Nesterov.")
register_optimizer("adafactor", build_adafactor, "torch Adafactor: factored second moment, ~0 optimizer state.")
