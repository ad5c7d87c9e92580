"""SPAM: AdamW with periodic momentum reset, a cosine re-warm after each reset and spike-aware clipping.

Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", arXiv 2501.06842 (Alg. 1).

Per parameter, with ``t`` the 1-based step and ``k = (t - 1) mod reset_interval`` the steps since the last reset:

1. **Momentum reset** (Alg. 1): before the steps with ``k == 0`` (``t = reset_interval + 1, 2 reset_interval + 1,
   ...``) ``m`` and ``v`` are set to zero (and, with sparse momentum, a new mask is drawn).
2. **Spike-aware clipping** (Alg. 1): from ``k >= clip_delay`` on, entries with ``g**2 > threshold * v``
   (``v`` from the previous step) become ``sign(g) * sqrt(threshold * v)``. The delay keeps the freshly zeroed
   ``v`` from clipping every entry.
3. Adam moments, bias-corrected with the steps since the reset, ``k + 1`` (the moments restart from zero, so this
   is what keeps ``m_hat`` unbiased).
4. **Cosine re-warm** of the step: the Adam update is multiplied by
   ``w(k) = 1 - 0.99 * (1 + cos(pi * k / rewarm_steps)) / 2`` for ``k < rewarm_steps`` and 1 afterwards, so it rises from 0.01
   to 1 in ``rewarm_steps`` steps after every reset (0.99 is the official code's constant). The first window starts
   with the re-warm too, as in the official code.
5. Decoupled weight decay ``W -= lr * weight_decay * W`` on the **whole** parameter (the official code decays
   ``p.data[mask]``, a copy under boolean indexing, so its decay does nothing). It is not multiplied by ``w(k)``.

**Sparse momentum** (``density < 1``, the paper's memory-constrained variant): each parameter with two or more dims keeps ``m`` and ``v`` only for a
random subset of its entries (each kept with probability ``density``) and only those entries are updated by Adam;
the subset is redrawn at every reset. The mask is drawn from a per-parameter ``torch.Generator`` seeded from
``seed`` and the parameter's name (so layer-wise and ordinary modes draw the same masks); its state and the mask
are kept in the optimizer state (``mask``: 1 byte/entry, ``rng_state``: uint8), so a resumed run redraws the same
masks. Vectors stay dense.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch

from hf_effi.optim.factory import register_optimizer

__all__ = ["SPAM", "build_spam", "rewarm_multiplier"]

_REWARM_FLOOR = 0.99  # the official code's CosineDecay(0.99, ...): the multiplier starts at 1 - 0.99


def rewarm_multiplier(steps_since_reset: int, rewarm_steps: int) -> float:
    """``w(k)``: 0.01 right after a reset, cosine up to 1 at ``k = rewarm_steps`` (1 everywhere when ``rewarm_steps == 0``)."""
    if steps_since_reset >= rewarm_steps:
        return 1.0
    return 1.0 - _REWARM_FLOOR * 0.5 * (1.0 + math.cos(math.pi * steps_since_reset / rewarm_steps))


def _param_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


class SPAM(torch.optim.Optimizer):
    """Spike-Aware Adam with Momentum Reset (arXiv 2501.06842).

    Args:
        params: parameters or param-group dicts (groups may carry ``param_names``: they seed the sparse masks).
        lr: learning rate.
        betas: Adam's ``(beta1, beta2)``.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: decoupled weight decay, on every entry.
        reset_interval: ``Delta T``, steps between momentum resets (official default 500; 0: never reset).
        threshold: ``theta`` of spike-aware clipping (official default 5000; 0: no clipping).
        rewarm_steps: steps of the cosine re-warm after each reset (official default 150; 0: none).
        clip_delay: steps after each reset before clipping starts (official default 20).
        density: fraction of entries with momentum in matrices (1.0: dense Adam moments).
        seed: seeds the sparse-momentum masks.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        reset_interval: int = 500,
        threshold: float = 5000.0,
        rewarm_steps: int = 150,
        clip_delay: int = 20,
        density: float = 1.0,
        seed: int = 0,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (beta1, beta2), got {betas!r}; e.g. (0.9, 0.999)")
        if not eps > 0 or not weight_decay >= 0 or not threshold >= 0:
            raise ValueError(
                f"need eps > 0, weight_decay >= 0 and threshold >= 0, got eps={eps!r}, weight_decay={weight_decay!r}, "
                f"threshold={threshold!r}"
            )
        for name, value in (
            ("reset_interval", reset_interval),
            ("rewarm_steps", rewarm_steps),
            ("clip_delay", clip_delay),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if reset_interval and (rewarm_steps > reset_interval or (threshold > 0 and clip_delay > reset_interval)):
            raise ValueError(
                f"rewarm_steps={rewarm_steps} and clip_delay={clip_delay} must not exceed reset_interval={reset_interval}: both "
                "count steps after each reset; lower them or raise reset_interval"
            )
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density!r}; 1.0 keeps dense momentum")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(float(b) for b in betas),
            eps=eps,
            weight_decay=weight_decay,
            reset_interval=reset_interval,
            threshold=float(threshold),
            rewarm_steps=rewarm_steps,
            clip_delay=clip_delay,
            density=float(density),
            seed=seed,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group_index, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._update(p, group, names[i] if names else f"{group_index}.{i}")
        return loss

    def _draw_mask(self, p: torch.Tensor, state: dict, density: float) -> None:
        gen = torch.Generator()
        gen.set_state(state["rng_state"])
        state["mask"] = (torch.rand(p.shape, generator=gen) < density).to(p.device)
        state["rng_state"] = gen.get_state()

    def _update(self, p: torch.Tensor, group: dict, name: str) -> None:
        if p.grad.is_sparse:
            raise TypeError("SPAM does not support sparse gradients; use dense embeddings (sparse=False)")
        beta1, beta2 = group["betas"]
        interval, density = group["reset_interval"], group["density"]
        sparse = density < 1 and p.ndim >= 2
        state = self.state[p]
        if not state:
            state["step"] = 0
            if sparse:
                state["rng_state"] = torch.Generator().manual_seed(_param_seed(group["seed"], name)).get_state()
        elif sparse:
            # torch's load_state_dict casts state tensors to the parameter's dtype; 0/1 and 0..255 survive exactly
            state["mask"] = state["mask"].bool()
            state["rng_state"] = state["rng_state"].to(torch.uint8)
        dtype = torch.promote_types(p.dtype, torch.float32)
        t = state["step"] + 1
        state["step"] = t
        k = (t - 1) % interval if interval else t - 1
        if k == 0:  # momentum reset (Alg. 1); at t = 1 this creates the moments
            if sparse:
                self._draw_mask(p, state, density)
            n = int(state["mask"].sum()) if sparse else None
            state["exp_avg"] = p.new_zeros(n, dtype=dtype) if sparse else torch.zeros_like(p, dtype=dtype)
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
        grad = p.grad.to(dtype)
        if sparse:
            grad = grad[state["mask"]]
        else:
            grad = grad.clone()
        m, v = state["exp_avg"], state["exp_avg_sq"]

        theta = group["threshold"]
        if theta > 0 and k >= group["clip_delay"]:
            bound = v.mul(theta)  # spike if g**2 > theta * v (Alg. 1): clip to sign(g) sqrt(theta v)
            spikes = grad.square() > bound
            grad = torch.where(spikes, grad.sign() * bound.sqrt(), grad)

        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        n_since = k + 1
        bias1, bias2 = 1 - beta1**n_since, 1 - beta2**n_since
        update = (m / bias1) / ((v / bias2).sqrt_().add_(group["eps"]))
        lr = group["lr"]
        scale = lr * rewarm_multiplier(k, group["rewarm_steps"])
        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])  # the whole parameter (see the module docstring)
        if sparse:
            delta = torch.zeros_like(p, dtype=dtype)
            delta[state["mask"]] = update
            update = delta
        p.add_(update.to(p.dtype), alpha=-scale)


def build_spam(
    param_groups: list[dict],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    reset_interval: int = 500,
    threshold: float = 5000.0,
    rewarm_steps: int = 150,
    clip_delay: int = 20,
    density: float = 1.0,
    seed: int = 0,
) -> SPAM:
    """SPAM over hf_effi's param groups (weight decay per group, none on biases and norms)."""
    return SPAM(
        param_groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        reset_interval=reset_interval,
        threshold=threshold,
        rewarm_steps=rewarm_steps,
        clip_delay=clip_delay,
        density=density,
        seed=seed,
    )


register_optimizer(
    "spam",
    build_spam,
    "SPAM (arXiv 2501.06842): AdamW + momentum reset with cosine re-warm + spike-aware clipping; sparse momentum.",
)
