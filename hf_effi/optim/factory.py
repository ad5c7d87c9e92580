"""``make``: the one entry point from a name to the ``(optimizer, scheduler)`` pair Trainer takes.

Optimizers are registered as *builders* ``builder(param_groups, *, lr, **kwargs) -> torch.optim.Optimizer``.
``param_groups`` come from :func:`hf_effi.optim.param_groups.build_param_groups` (trainable parameters only, no
weight decay on biases and norms, and a ``target`` group when the method asks for one). The keyword arguments a
method accepts are read from its builder's signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import nn

from hf_effi.optim.param_groups import build_param_groups
from hf_effi.registry import Registry, closest_names
from hf_effi.schedules import make_scheduler

__all__ = ["OPTIMIZERS", "OptimizerFactory", "make", "make_cls_and_kwargs", "make_optimizer", "register_optimizer"]

OPTIMIZERS = Registry("optimizer", family="optimizers")

_ZO = "ZOTrainer with ZOArguments(zo_method={!r}) (zeroth-order: no gradients, so no outer optimizer)"
_WITH_ANY_OPTIMIZER = " with any optimizer from hf_effi.make (effi_optim=...)"
_TRAINER_TECHNIQUES = {
    "mezo": _ZO.format("mezo_sgd"),
    "mezo_sgd": _ZO.format("mezo_sgd"),
    "sparse_mezo": _ZO.format("sparse_mezo"),
    "zo_sgd": _ZO.format("mezo_sgd"),
    "zo_adam": _ZO.format("zo_adam"),
    "lisa": "LISATrainer (layer-wise importance sampling)" + _WITH_ANY_OPTIMIZER,
    "hft": "HFTTrainer (half fine-tuning)" + _WITH_ANY_OPTIMIZER,
    "infobatch": "InfoBatchTrainer (data pruning)" + _WITH_ANY_OPTIMIZER,
}
for _name, _trainer in _TRAINER_TECHNIQUES.items():
    OPTIMIZERS.redirect(
        _name,
        f"{_name!r} changes the training loop, so it is a Trainer in hf_effi.trainers, not an optimizer: "
        f"use hf_effi.trainers.{_trainer}.",
    )

# Arguments make_optimizer consumes itself in layer-wise mode, passed to LayerwiseOptimizer.
_LAYERWISE_ARGS = ("gradient_accumulation_steps", "max_grad_norm_per_param")


def register_optimizer(
    name: str,
    builder: Callable[..., torch.optim.Optimizer],
    description: str,
    *,
    targets: bool = False,
    layerwise: bool = True,
) -> Callable:
    """Register ``builder`` under ``name``.

    Args:
        targets: the method treats some 2-D matrices specially and wants a ``target`` param group.
        layerwise: the method can run one parameter at a time inside backward (``make(..., layerwise=True)``).
    """
    return OPTIMIZERS.register(name, builder, description, targets=targets, layerwise=layerwise)


def _check_lr(lr: float) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")


def _check_kwargs(entry, kwargs: dict) -> None:
    params = inspect.signature(entry.factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p in params if p not in ("param_groups", "lr")]
    for key in kwargs:
        if key not in valid:
            close = closest_names(key, valid)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"optimizer {entry.name!r} got an unknown argument {key!r}{hint}; it accepts: {', '.join(valid)}"
            )


def make_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    target_modules: str | Iterable[str] | None = None,
    layerwise: bool = False,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """Build a registered optimizer over the trainable parameters of ``model``.

    Args:
        name: a registered optimizer (``hf_effi.available()["optimizers"]``).
        model: a ``PreTrainedModel``, a ``PeftModel``, a wrapped (DDP/FSDP2) model or any ``nn.Module``.
        lr: peak learning rate (``> 0``); schedules multiply it.
        weight_decay: decoupled weight decay for matrices; biases and norm weights get none.
        target_modules: which ``nn.Linear`` weights the method treats specially (methods with targets only):
            module-name suffixes like peft (``["q_proj", "v_proj"]``), a regex, or ``"all-linear"``.
        layerwise: update each parameter inside backward as soon as its gradient is ready, so the full gradient
            never exists (:class:`hf_effi.optim.backward_step.LayerwiseOptimizer`); takes also
            ``gradient_accumulation_steps`` and ``max_grad_norm_per_param``.
        **optimizer_kwargs: the method's own hyperparameters (e.g. ``betas``, ``momentum``).
    """
    entry = OPTIMIZERS.get(name)
    _check_lr(lr)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if target_modules is not None and not entry.meta["targets"]:
        raise ValueError(
            f"optimizer {entry.name!r} treats all parameters alike, so target_modules does not apply to it; "
            "drop target_modules (or freeze parameters with requires_grad=False to exclude them)"
        )
    layerwise_args = {k: optimizer_kwargs.pop(k) for k in _LAYERWISE_ARGS if k in optimizer_kwargs}
    if layerwise_args and not layerwise:
        raise ValueError(f"{', '.join(layerwise_args)} only apply with layerwise=True")
    _check_kwargs(entry, optimizer_kwargs)
    groups = build_param_groups(
        model, weight_decay=weight_decay, with_targets=entry.meta["targets"], target_modules=target_modules
    )
    build = partial(entry.factory, lr=lr, **optimizer_kwargs)
    if not layerwise:
        return build(groups)
    if not entry.meta["layerwise"]:
        raise ValueError(f"optimizer {entry.name!r} does not support layerwise=True")
    from hf_effi.optim.backward_step import LayerwiseOptimizer

    for g in groups:
        g["lr"] = lr
    return LayerwiseOptimizer(groups, build, **layerwise_args)


def make(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    num_training_steps: int,
    schedule: str = "constant",
    warmup: int | float = 0,
    weight_decay: float = 0.0,
    schedule_kwargs: dict | None = None,
    batch_size: float | None = None,
    reference_batch_size: float | None = None,
    **optimizer_kwargs,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """``(optimizer, scheduler)`` for ``Trainer(..., optimizers=hf_effi.make(...))``.

    Args:
        name, model, lr, weight_decay, **optimizer_kwargs: as in :func:`make_optimizer`.
        num_training_steps: optimizer steps in the run (Trainer's ``max_steps``).
        schedule: a registered schedule (``hf_effi.available()["schedules"]``).
        warmup: steps (``int``) or a fraction of ``num_training_steps`` (``float`` in ``[0, 1)``).
        schedule_kwargs: the schedule's own arguments, e.g. ``{"decay_type": "exponential"}`` for ``wsd``.
        batch_size, reference_batch_size: give both to rescale the optimizer's second-moment EMA decays (tuned at
            ``reference_batch_size``) to ``batch_size`` so their half-life in tokens stays fixed
            (:mod:`hf_effi.optim.batch_rules`); optimizers without such a decay are refused.

    Example:
        >>> opt, sched = hf_effi.make("adamw", model, lr=1e-3, num_training_steps=1000, schedule="wsd", warmup=0.05)
    """
    if batch_size is not None or reference_batch_size is not None:
        from hf_effi.optim.batch_rules import scale_for_batch_size

        entry = OPTIMIZERS.get(name)
        optimizer_kwargs = scale_for_batch_size(
            entry.name,
            entry.factory,
            optimizer_kwargs,
            batch_size=batch_size,
            reference_batch_size=reference_batch_size,
        )
    if OPTIMIZERS.get(name).name.startswith("schedule_free") and schedule != "constant":
        raise ValueError(
            f"{name!r} is schedule-free: it replaces the learning-rate decay by averaging, so use "
            f"schedule='constant' (warmup allowed), got schedule={schedule!r}"
        )
    optimizer = make_optimizer(name, model, lr=lr, weight_decay=weight_decay, **optimizer_kwargs)
    try:
        scheduler = make_scheduler(
            schedule, optimizer, num_training_steps=num_training_steps, warmup=warmup, **(schedule_kwargs or {})
        )
    except Exception:
        # Nothing half-applied: a layer-wise optimizer has already hooked the model's parameters.
        if hasattr(optimizer, "remove_hooks"):
            optimizer.remove_hooks()
        raise
    return optimizer, scheduler


class OptimizerFactory:
    """Trainer's optimizer-factory protocol: ``Trainer(optimizer_cls_and_kwargs=(OptimizerFactory, kwargs))``.

    Trainer calls ``OptimizerFactory()(model, **kwargs)`` after it wrapped the model, which is what FSDP needs
    (Trainer rejects a ready optimizer instance when FSDP is enabled). Build the pair with
    :func:`make_cls_and_kwargs`.
    """

    def __call__(self, model: nn.Module, *, name: str, **kwargs) -> torch.optim.Optimizer:
        return make_optimizer(name, model, **kwargs)


def make_cls_and_kwargs(name: str, *, lr: float, **kwargs) -> tuple[type, dict]:
    """``(OptimizerFactory, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)`` (FSDP and other wrappers).

    The name and arguments are validated now, so mistakes surface before training starts.
    """
    entry = OPTIMIZERS.get(name)
    _check_lr(lr)
    _check_kwargs(
        entry,
        {k: v for k, v in kwargs.items() if k not in ("weight_decay", "target_modules", "layerwise", *_LAYERWISE_ARGS)},
    )
    return OptimizerFactory, {"name": entry.name, "lr": lr, **kwargs}
