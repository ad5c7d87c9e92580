"""LOMO and AdaLomo: optimizers fused into backward, so no full gradient and (almost) no optimizer state exist.

* LOMO — Lv et al., "Full Parameter Fine-tuning for Large Language Models with Limited Resources", arXiv 2306.09782:
  plain SGD applied to each parameter as soon as backward has produced its gradient, which is then freed.
* AdaLomo — Lv et al., "AdaLomo: Low-memory Optimization with Adaptive Learning Rate", arXiv 2310.10195: the same
  fused update with an Adafactor-style non-negative-matrix-factorised second moment (a row and a column vector per
  matrix, O(m + n) state), grouped update normalisation and a step size relative to the parameter's RMS (Alg. 1).

Both are built on :class:`hf_effi.optim.backward_step.LayerwiseOptimizer`: each parameter gets its own inner
optimizer (:class:`LomoStep`, :class:`AdaLomoStep`) stepped from its post-accumulate-grad hook. That gives what the
reference implementation lacks: state in ``optimizer.state`` and ``state_dict()`` (``weights_only``-loadable, so
Trainer resumes bit for bit), no hard-coded device, real gradient accumulation (the update happens on the last
micro-batch of a window, on the accumulated gradient) and an LR scheduler that drives ``param_groups``.

``make("lomo" | "adalomo", ...)`` is always fused into backward: these builders return the layer-wise optimizer
themselves, so ``layerwise=True`` is not needed (and is refused by the factory, since wrapping twice would update
every parameter twice). ``gradient_accumulation_steps`` and ``max_grad_norm_per_param`` are arguments of the
builders; inside ``EffiTrainer`` accumulation follows accelerate's sync flag and needs neither.

Clipping: the papers clip by the global gradient norm, which LOMO's code computes with a second backward pass
(``retain_graph=True``) before the updating one, doubling the backward cost. hf_effi does not run that second pass:
``max_grad_norm_per_param`` clips each parameter's gradient to that L2 norm (torch's rule, per parameter), and
AdaLomo's grouped update normalisation (``clip_threshold``) already bounds every update's RMS. Trainer's
``max_grad_norm`` has no effect (the gradients are gone when it runs); EffiTrainer logs the true global norm.

fp16 loss scaling is refused: a ``GradScaler`` scales the loss, so the hooks would apply scaled gradients before the
scaler could unscale or skip the step. :class:`FusedBackwardOptimizer` raises as soon as a scaler drives it; use
bf16 or fp32 (EffiTrainer refuses ``fp16=True`` at construction).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hf_effi.optim.backward_step import LayerwiseOptimizer
from hf_effi.optim.factory import register_optimizer

__all__ = ["FUSED_IN_BACKWARD", "AdaLomoStep", "FusedBackwardOptimizer", "LomoStep", "build_adalomo", "build_lomo"]

# Registered names whose optimizer always updates inside backward (EffiTrainer checks fp16/DDP for them up front).
FUSED_IN_BACKWARD = ("lomo", "adalomo")


def _check_positive(value: Any, name: str, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _rms(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t) / math.sqrt(t.numel())


class FusedBackwardOptimizer(LayerwiseOptimizer):
    """A :class:`LayerwiseOptimizer` that refuses to be driven by an fp16 ``GradScaler``.

    ``_step_supports_amp_scaling`` makes ``GradScaler.step`` hand the scale to :meth:`step` instead of checking
    gradients for inf itself; there are no gradients left to check, and the updates already used scaled ones.
    """

    _step_supports_amp_scaling = True

    def step(self, closure=None) -> None:
        if getattr(self, "grad_scale", None) is not None:
            raise RuntimeError(
                "LOMO/AdaLomo cannot run under an fp16 GradScaler: every parameter was updated inside backward with "
                "the loss-scaled gradient, before the scaler could unscale it or skip an overflowing step. Drop the "
                "GradScaler (and fp16=True in TrainingArguments) and train in bf16 or fp32."
            )
        super().step(closure)


class LomoStep(torch.optim.Optimizer):
    """LOMO's per-parameter SGD update (arXiv 2306.09782, Alg. 1): ``p <- p - lr * (g + weight_decay * p)``.

    The update is computed in fp32 and written back in the parameter's dtype (bf16 weights stay bf16). Weight decay
    is decoupled and scaled by ``lr``, as in the authors' code; the paper's experiments use none.
    """

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.0):
        _check_positive(lr, "lr")
        _check_positive(weight_decay, "weight_decay", allow_zero=True)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p32 = p.float()  # the parameter itself when it is fp32
                if wd:
                    p32.mul_(1.0 - lr * wd)
                p32.add_(p.grad.float(), alpha=-lr)
                if p32 is not p:
                    p.copy_(p32)


class AdaLomoStep(torch.optim.Optimizer):
    """AdaLomo's per-parameter update (arXiv 2310.10195, Alg. 1), for one parameter of any shape.

    With ``g`` the gradient (fp32), ``t`` the 1-based update count and ``beta2_t = 1 - t ** decay_rate``
    (``decay_rate=-0.8``; the paper's Alg. 1 writes a constant ``beta``, the authors' code and defaults use this
    Adafactor schedule, which gives ``beta2_1 = 0``: the first step uses ``g**2`` alone; we follow the code):

    * ``r <- beta2_t r + (1 - beta2_t) mean_cols(g**2 + eps[0])``, ``c <- beta2_t c + (1 - beta2_t)
      mean_rows(g**2 + eps[0])`` (the non-negative matrix factorisation of the second moment, Alg. 1), and
      ``v = r c^T / mean(r)``; tensors with fewer than 2 dims keep a full ``v`` (``exp_avg_sq``). For more than
      2 dims the last two are factored, as in Adafactor.
    * ``u = g / sqrt(v)``; grouped update normalisation: ``u <- u / max(1, RMS(u) / clip_threshold)``.
    * relative step: ``alpha = lr * max(eps[1], RMS(p))`` with ``RMS(p)`` of the parameter before this update;
      ``p <- p (1 - alpha * weight_decay) - alpha u`` (decoupled weight decay as in the authors' code).

    State per parameter (fp32, on the parameter's device): ``step`` and ``exp_avg_sq_row`` ``[..., m]`` plus
    ``exp_avg_sq_col`` ``[..., n]`` for a ``[..., m, n]`` parameter, or ``exp_avg_sq`` for vectors. No first moment.
    ``step()`` overwrites an fp32 parameter's ``.grad`` with the update (it is meant to run fused into backward,
    where the gradient is freed right after; this saves a full-size temporary).

    Args:
        lr: the relative step size (paper default ``1e-3``).
        eps: ``(eps1, eps2)``: added to ``g**2``; the floor of the parameter RMS in the relative step.
        clip_threshold: ``d`` of the grouped update normalisation (``1.0``).
        decay_rate: exponent of the second-moment decay ``beta2_t = 1 - t ** decay_rate`` (``-0.8``), in ``(-1, 0)``.
        weight_decay: decoupled weight decay, multiplied by the relative step.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        weight_decay: float = 0.0,
    ):
        _check_positive(lr, "lr")
        if not (isinstance(eps, (tuple, list)) and len(eps) == 2):
            raise ValueError(f"eps must be a pair (eps1, eps2) like (1e-30, 1e-3), got {eps!r}")
        _check_positive(eps[0], "eps[0]", allow_zero=True)
        _check_positive(eps[1], "eps[1]", allow_zero=True)
        _check_positive(clip_threshold, "clip_threshold")
        if isinstance(decay_rate, bool) or not isinstance(decay_rate, (int, float)) or not -1.0 < decay_rate < 0.0:
            raise ValueError(
                f"decay_rate must be in (-1, 0) (beta2_t = 1 - t ** decay_rate rises towards 1), got {decay_rate!r}; "
                "the paper uses -0.8"
            )
        _check_positive(weight_decay, "weight_decay", allow_zero=True)
        defaults = {
            "lr": lr,
            "eps": tuple(eps),
            "clip_threshold": clip_threshold,
            "decay_rate": decay_rate,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            f32 = {"dtype": torch.float32, "device": p.device}
            if p.ndim >= 2:
                state["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], **f32)
                state["exp_avg_sq_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], **f32)
            else:
                state["exp_avg_sq"] = torch.zeros_like(p, **f32)
        return state

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self._init_state(p)
        eps1, eps2 = group["eps"]
        state["step"] += 1
        beta2 = 1.0 - state["step"].item() ** group["decay_rate"]
        # The update is built in the gradient's own buffer (an fp32 copy for low-precision parameters): fused into
        # backward the gradient is freed right after, and the largest matrix then needs no extra full-size temporary.
        update = p.grad if p.grad.dtype == torch.float32 else p.grad.float()
        if p.ndim >= 2:  # Alg. 1: factored second moment, v = r c^T / mean(r)
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            n, m = p.shape[-1], p.shape[-2]
            # mean(g**2 + eps1) over a row / column, from norms: no full-size g**2 temporary
            row.mul_(beta2).add_(torch.linalg.vector_norm(update, dim=-1).square_().div_(n).add_(eps1), alpha=1 - beta2)
            col.mul_(beta2).add_(torch.linalg.vector_norm(update, dim=-2).square_().div_(m).add_(eps1), alpha=1 - beta2)
            update.mul_((row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1))
            update.mul_(col.rsqrt().unsqueeze(-2))
        else:
            exp_avg_sq = state["exp_avg_sq"]
            exp_avg_sq.mul_(beta2).addcmul_(update, update, value=1 - beta2).add_((1 - beta2) * eps1)
            update.mul_(exp_avg_sq.rsqrt())
        # Alg. 1: grouped update normalisation, u / max(1, RMS(u) / d)
        update.div_((_rms(update) / group["clip_threshold"]).clamp_(min=1.0))
        p32 = p.float()  # the parameter itself when it is fp32
        # Alg. 1: the step is relative to the parameter's scale, lr * max(eps2, RMS(p_{t-1})).
        alpha = group["lr"] * torch.clamp(_rms(p32), min=eps2)
        if group["weight_decay"]:
            p32.mul_(1.0 - alpha * group["weight_decay"])
        p32.sub_(update.mul_(alpha))
        if p32 is not p:
            p.copy_(p32)


def _as_groups(param_groups: Any, lr: float) -> list[dict[str, Any]]:
    groups = list(param_groups)
    if groups and isinstance(groups[0], torch.Tensor):
        groups = [{"params": groups}]
    # A group's own lr (e.g. set by make_optimizer) wins over the builder's.
    return [{"lr": lr, **g} for g in groups]


def _fused(inner_cls, param_groups, lr, gradient_accumulation_steps, max_grad_norm_per_param, **hyper):
    def inner_factory(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return inner_cls(groups, **hyper)

    return FusedBackwardOptimizer(
        _as_groups(param_groups, lr),
        inner_factory,
        gradient_accumulation_steps=gradient_accumulation_steps,
        max_grad_norm_per_param=max_grad_norm_per_param,
    )


def build_lomo(
    param_groups: list[dict],
    *,
    lr: float,
    gradient_accumulation_steps: int = 1,
    max_grad_norm_per_param: float | None = None,
) -> FusedBackwardOptimizer:
    """LOMO (arXiv 2306.09782): SGD fused into backward; no optimizer state. Each group's ``weight_decay`` applies.

    Args:
        param_groups: param-group dicts (or a list of parameters), all with ``requires_grad=True``.
        lr: the SGD step size.
        gradient_accumulation_steps: backward passes per update (ignored once a sync source is set, as EffiTrainer
            does).
        max_grad_norm_per_param: clip each parameter's gradient to this L2 norm (the global-norm clipping of the
            paper needs a second backward pass; see the module docstring).
    """
    _check_positive(lr, "lr")
    return _fused(LomoStep, param_groups, lr, gradient_accumulation_steps, max_grad_norm_per_param)


def build_adalomo(
    param_groups: list[dict],
    *,
    lr: float,
    eps: tuple[float, float] = (1e-30, 1e-3),
    clip_threshold: float = 1.0,
    decay_rate: float = -0.8,
    gradient_accumulation_steps: int = 1,
    max_grad_norm_per_param: float | None = None,
) -> FusedBackwardOptimizer:
    """AdaLomo (arXiv 2310.10195): factored second moment, grouped update normalisation, relative step, fused into
    backward; O(m + n) fp32 state per ``m x n`` matrix. Hyperparameters as in :class:`AdaLomoStep`, the rest as in
    :func:`build_lomo`. Each group's ``weight_decay`` applies (decoupled, times the relative step).
    """
    _check_positive(lr, "lr")
    AdaLomoStep([torch.zeros(1)], lr=lr, eps=eps, clip_threshold=clip_threshold, decay_rate=decay_rate)  # validate
    return _fused(
        AdaLomoStep,
        param_groups,
        lr,
        gradient_accumulation_steps,
        max_grad_norm_per_param,
        eps=tuple(eps),
        clip_threshold=clip_threshold,
        decay_rate=decay_rate,
    )


register_optimizer(
    "lomo",
    build_lomo,
    "LOMO: SGD fused into backward, no state, no full gradient (always layer-wise).",
    layerwise=False,
)
register_optimizer(
    "adalomo",
    build_adalomo,
    "AdaLomo: factored 2nd moment + relative step, fused into backward, ~0 state (always layer-wise).",
    layerwise=False,
)
