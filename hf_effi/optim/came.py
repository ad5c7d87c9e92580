"""CAME: Adafactor's factored second moment plus a factored *confidence* that scales the momentum update.

Luo et al., "CAME: Confidence-guided Adaptive Memory Efficient Optimization", arXiv 2307.02047, Alg. 1.

For a matrix parameter ``W: [..., n, m]`` with gradient ``G`` the state is the first moment ``M`` (as big as ``W``)
and four vectors: ``r, c`` (row/column EMAs of ``G**2 + eps1``) and ``R, C`` (row/column EMAs of the instability
``U``), i.e. about 4 bytes per parameter in fp32, half of AdamW's 8.

Choices where the paper leaves room (each is tested):

* Alg. 1 writes the factors with sums (``(G**2 + eps1) 1_m``); we keep row and column *means*. The estimate
  ``r c^T / (1_n^T r)`` is the same either way, because the factors ``m`` and ``n`` cancel in the ratio.
* Alg. 1 is written for matrices. Vectors (biases, norm weights) keep a full second moment ``v`` (Adafactor's
  unfactored case) and update with the momentum alone, ``W -= lr * M``: no confidence factor, as in the authors'
  released code. Tensors with more than two dims are factored over their last two.
* Weight decay is decoupled (``W -= lr * weight_decay * W``), applied before the update; groups with
  ``weight_decay == 0`` (biases and norms from :func:`hf_effi.make`) get none.
* No bias correction (Alg. 1 has none).
"""

from __future__ import annotations

import torch

from hf_effi.optim.factory import register_optimizer
from hf_effi.optim.per_parameter import PerParameterOptimizer

__all__ = ["CAME", "build_came"]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


def _factored_inverse_sqrt(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(r c^T / mean(r))`` for row means ``row: [..., n]`` and column means ``col: [..., m]``."""
    row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
    return row_factor * col.rsqrt().unsqueeze(-2)


class CAME(PerParameterOptimizer):
    """Confidence-guided Adaptive Memory Efficient optimizer (arXiv 2307.02047, Alg. 1).

    Args:
        params: parameters or param-group dicts.
        lr: learning rate ``eta``.
        betas: ``(beta1, beta2, beta3)``: momentum, second-moment and confidence EMAs (paper: 0.9, 0.999, 0.9999).
        eps: ``(eps1, eps2)`` added to ``G**2`` and to the instability ``U`` (paper: 1e-30, 1e-16).
        clip_threshold: ``d`` in ``u / max(1, RMS(u) / d)`` (paper: 1.0).
        weight_decay: decoupled weight decay.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        eps: tuple[float, float] = (1e-30, 1e-16),
        clip_threshold: float = 1.0,
        weight_decay: float = 0.0,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 3 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"betas must be three numbers in [0, 1) (beta1, beta2, beta3), got {betas!r}; "
                "the paper uses (0.9, 0.999, 0.9999)"
            )
        if not isinstance(eps, (tuple, list)) or len(eps) != 2 or not all(e > 0 for e in eps):
            raise ValueError(
                f"eps must be two positive numbers (eps1, eps2), got {eps!r}; the paper uses (1e-30, 1e-16)"
            )
        if not clip_threshold > 0:
            raise ValueError(f"clip_threshold must be > 0, got {clip_threshold!r}; the paper uses 1.0")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        betas, eps = tuple(float(b) for b in betas), tuple(float(e) for e in eps)
        defaults = dict(lr=lr, betas=betas, eps=eps, clip_threshold=clip_threshold, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        if p.grad.is_sparse:
            raise TypeError("CAME does not support sparse gradients; use dense embeddings (sparse=False)")
        beta1, beta2, beta3 = group["betas"]
        eps1, eps2 = group["eps"]
        grad = p.grad.to(torch.promote_types(p.dtype, torch.float32))
        factored = grad.ndim >= 2
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            if factored:
                for key, shape in (("row", grad.shape[:-1]), ("col", grad.shape[:-2] + grad.shape[-1:])):
                    state[f"exp_avg_sq_{key}"] = grad.new_zeros(shape)
                    state[f"exp_avg_res_{key}"] = grad.new_zeros(shape)
            else:
                state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1

        sq = grad.square().add_(eps1)  # G**2 + eps1 (Alg. 1)
        if factored:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(beta2).add_(sq.mean(dim=-1), alpha=1 - beta2)  # r_t
            col.mul_(beta2).add_(sq.mean(dim=-2), alpha=1 - beta2)  # c_t
            u = _factored_inverse_sqrt(row, col).mul_(grad)  # u_t = G / sqrt(V_t), V_t = r c^T / 1^T r
        else:
            v = state["exp_avg_sq"]
            v.mul_(beta2).add_(sq, alpha=1 - beta2)
            u = v.rsqrt().mul_(grad)
        u.div_((_rms(u) / group["clip_threshold"]).clamp_(min=1.0))  # u_hat = u / max(1, RMS(u) / d)
        m = state["exp_avg"]
        m.mul_(beta1).add_(u, alpha=1 - beta1)  # m_t

        if factored:
            instability = (u - m).square_().add_(eps2)  # U_t = (u_hat - m_t)**2 + eps2
            res_row, res_col = state["exp_avg_res_row"], state["exp_avg_res_col"]
            res_row.mul_(beta3).add_(instability.mean(dim=-1), alpha=1 - beta3)  # R_t
            res_col.mul_(beta3).add_(instability.mean(dim=-2), alpha=1 - beta3)  # C_t
            update = _factored_inverse_sqrt(res_row, res_col).mul_(m)  # m_t / sqrt(S_t)
        else:
            update = m
        lr = group["lr"]
        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-lr)  # theta_t = theta_{t-1} - eta * m_t / sqrt(S_t)


def build_came(
    param_groups: list[dict],
    *,
    lr: float,
    betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
    eps: tuple[float, float] = (1e-30, 1e-16),
    clip_threshold: float = 1.0,
) -> CAME:
    """CAME over hf_effi's param groups (weight decay per group, none on biases and norms)."""
    return CAME(param_groups, lr=lr, betas=tuple(betas), eps=tuple(eps), clip_threshold=clip_threshold)


register_optimizer(
    "came",
    build_came,
    "CAME (arXiv 2307.02047): Adafactor-style factored second moment + factored confidence; ~4 B/param state.",
)
