"""LAMB: Adam's update rescaled per layer by the trust ratio ``||w|| / ||r + lambda w||``.

You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", arXiv 1904.00962, Alg. 2.

A "layer" is one parameter tensor, so the trust ratio is computed per parameter and LAMB runs unchanged in
layer-wise mode (``make(..., layerwise=True)``). Parameters in groups with ``effi_role == "no_decay"`` (biases and
norm weights, see :mod:`hf_effi.optim.param_groups`) are excluded from the trust ratio and from weight decay, as in
the paper's BERT setup: they take the plain Adam step. Choices: ``phi`` is the identity (Alg. 2 allows a clipped
``phi``), and the ratio is 1 where ``||w||`` or ``||r + lambda w||`` is 0 (a zero-initialised tensor still moves).
"""

from __future__ import annotations

import torch

from hf_effi.optim.factory import register_optimizer
from hf_effi.optim.per_parameter import PerParameterOptimizer

__all__ = ["LAMB", "build_lamb", "trust_ratio"]


def trust_ratio(weight_norm: torch.Tensor, update_norm: torch.Tensor) -> torch.Tensor:
    """``||w|| / ||update||``, or 1 where either norm is 0 (scalar tensors)."""
    ok = (weight_norm > 0) & (update_norm > 0)
    return torch.where(ok, weight_norm / torch.where(ok, update_norm, 1.0), 1.0)


class LAMB(PerParameterOptimizer):
    """Layer-wise Adaptive Moments for Batch training (arXiv 1904.00962, Alg. 2).

    Args:
        params: parameters or param-group dicts; groups with ``effi_role == "no_decay"`` skip the trust ratio.
        lr: learning rate ``eta``.
        betas: ``(beta1, beta2)`` of the Adam moments.
        eps: added to ``sqrt(v_hat)`` (the paper's BERT runs use 1e-6).
        weight_decay: ``lambda``, added to the Adam direction before the trust ratio (Alg. 2).
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (beta1, beta2), got {betas!r}; e.g. (0.9, 0.999)")
        if not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"need eps > 0 and weight_decay >= 0, got eps={eps!r}, weight_decay={weight_decay!r}")
        defaults = dict(lr=lr, betas=tuple(float(b) for b in betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        excluded = group.get("effi_role") == "no_decay"
        if p.grad.is_sparse:
            raise TypeError("LAMB does not support sparse gradients; use dense embeddings (sparse=False)")
        beta1, beta2 = group["betas"]
        grad = p.grad.to(torch.promote_types(p.dtype, torch.float32))
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(grad, alpha=1 - beta1)  # m_t
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v_t
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        r = m_hat / v_hat.sqrt().add_(group["eps"])  # r_t = m_hat / (sqrt(v_hat) + eps)
        w = p.to(grad.dtype)
        if excluded:
            p.add_(r.to(p.dtype), alpha=-group["lr"])
            return
        if group["weight_decay"] != 0:
            r.add_(w, alpha=group["weight_decay"])  # r_t + lambda x_t
        ratio = trust_ratio(torch.linalg.vector_norm(w), torch.linalg.vector_norm(r))  # phi(||x||) / ||r + lambda x||
        p.add_((r * ratio).to(p.dtype), alpha=-group["lr"])


def build_lamb(
    param_groups: list[dict],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
) -> LAMB:
    """LAMB over hf_effi's param groups (biases and norm weights: no trust ratio, no weight decay)."""
    return LAMB(param_groups, lr=lr, betas=tuple(betas), eps=eps)


register_optimizer(
    "lamb",
    build_lamb,
    "LAMB (arXiv 1904.00962): Adam update scaled by a per-tensor trust ratio; for large batches. 8 B/param.",
)
