"""LARS: heavy-ball SGD whose step is rescaled per layer by a local learning rate ``eta ||w|| / (||g|| + beta ||w||)``.

You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks", arXiv 1708.03888, Alg. 1::

    lambda_local = eta * ||w_t|| / (||g_t|| + beta * ||w_t||)          # eta: trust coefficient, beta: weight decay
    v_{t+1} = m * v_t + gamma_t * lambda_local * (g_t + beta * w_t)    # gamma_t: the (scheduled) learning rate
    w_{t+1} = w_t - v_{t+1}

The learning rate sits inside the momentum buffer, as in Alg. 1 (so changing it changes only new contributions). A
"layer" is one parameter tensor, so LARS runs unchanged in layer-wise mode. Parameters in groups with
``effi_role == "no_decay"`` (biases, norm weights) are excluded from the local rate and from weight decay: they
take ``v = m v + gamma g``, as is usual for LARS. Choice: the local rate is 1 where ``||w||`` or ``||g||`` is 0.
"""

from __future__ import annotations

import torch

from hf_effi.optim.factory import register_optimizer
from hf_effi.optim.per_parameter import PerParameterOptimizer

__all__ = ["LARS", "build_lars"]


class LARS(PerParameterOptimizer):
    """Layer-wise Adaptive Rate Scaling (arXiv 1708.03888, Alg. 1).

    Args:
        params: parameters or param-group dicts; groups with ``effi_role == "no_decay"`` skip the local rate.
        lr: global learning rate ``gamma``; with the default trust coefficient the step is about
            ``lr * 1e-3 * ||w||`` per tensor, so LARS learning rates are much larger than Adam's.
        momentum: ``m`` (paper: 0.9).
        trust_coefficient: ``eta`` (paper: 0.001).
        weight_decay: ``beta``.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        trust_coefficient: float = 1e-3,
        weight_decay: float = 0.0,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}; the paper uses 0.9")
        if not trust_coefficient > 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient!r}; the paper uses 0.001")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        defaults = dict(lr=lr, momentum=momentum, trust_coefficient=trust_coefficient, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        excluded = group.get("effi_role") == "no_decay"
        if p.grad.is_sparse:
            raise TypeError("LARS does not support sparse gradients; use dense embeddings (sparse=False)")
        grad = p.grad.to(torch.promote_types(p.dtype, torch.float32))
        w = p.to(grad.dtype)
        if excluded:
            direction, local_lr = grad, 1.0
        else:
            beta = group["weight_decay"]
            w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(grad)
            ok = (w_norm > 0) & (g_norm > 0)
            ratio = group["trust_coefficient"] * w_norm / torch.where(ok, g_norm + beta * w_norm, 1.0)
            local_lr = torch.where(ok, ratio, 1.0)  # lambda_local (Alg. 1)
            direction = grad.add(w, alpha=beta) if beta != 0 else grad
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(direction * local_lr, alpha=group["lr"])  # v_{t+1}
        p.sub_(buf.to(p.dtype))  # w_{t+1} = w_t - v_{t+1}


def build_lars(
    param_groups: list[dict],
    *,
    lr: float,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
) -> LARS:
    """LARS over hf_effi's param groups (biases and norm weights: no local rate, no weight decay)."""
    return LARS(param_groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)


register_optimizer(
    "lars",
    build_lars,
    "LARS (arXiv 1708.03888): SGD momentum with a per-tensor trust ratio; for large batches. 4 B/param.",
)
