"""``ZOTrainer``: zeroth-order fine-tuning (MeZO-SGD, ZO-Adam, Sparse MeZO) inside a normal transformers Trainer.

MeZO (Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", arXiv 2305.17333) trains with the
memory of inference: two forward passes under ``torch.no_grad`` at ``θ ± εz`` give a projected gradient, and the
update regenerates ``z`` from a seed instead of storing it. The reference implementation copies Trainer's inner loop,
reseeds the global RNG and refuses gradient accumulation. Here only ``training_step`` (two forwards, no backward) and
the optimizer (:class:`~hf_effi.trainers.zo_perturb.ZOOptimizer`, whose ``step`` applies the update with the
scheduler's learning rate) change, so logging, LR schedules, checkpoints, resume and ``evaluate()`` are Trainer's own.

- Gradient accumulation ``n`` averages ``n`` perturbation samples, one per micro-batch, before one update.
- DDP: every rank draws the same ``z`` (same seed sequence), computes its projected gradient on its own micro-batch;
  the scalar is all-reduced (mean) so every replica applies the identical update.
- PEFT: only parameters with ``requires_grad`` are perturbed and updated (the adapters of a ``PeftModel``).
- No ``.grad`` is ever allocated and ``backward`` is never called.
- ``zo_objective(model, inputs) -> scalar tensor`` replaces the loss for the estimate (e.g. ``-accuracy``: ZO does not
  need a differentiable objective); ``evaluate()`` still reports the model's loss.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hf_effi.optim.param_groups import build_param_groups
from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.effi_trainer import EffiTrainer
from hf_effi.trainers.zo_perturb import ZO_METHODS, ZOOptimizer

__all__ = ["ZOArguments", "ZOTrainer"]


@dataclass
class ZOArguments(EffiTrainingArguments):
    """TrainingArguments for zeroth-order training with :class:`ZOTrainer`.

    ``learning_rate``, ``weight_decay``, the schedule (``lr_scheduler_type`` or ``effi_schedule``), ``warmup_*``,
    ``gradient_accumulation_steps`` and, for ZO-Adam, ``adam_beta1``/``adam_beta2``/``adam_epsilon`` keep their
    TrainingArguments meaning. ``max_grad_norm`` defaults to 0 here: there is no gradient to clip.

    Args:
        zo_method: ``"mezo_sgd"`` (MeZO), ``"zo_adam"`` (Adam on the ZO estimate, +8 bytes per trainable parameter)
            or ``"sparse_mezo"`` (MeZO on a mask of small-magnitude weights).
        zo_eps: perturbation scale ε. MeZO's default is 1e-3 for full fine-tuning (1e-2 for LoRA).
        zo_seed: seed of the perturbation directions; ``None`` uses ``seed``. Must be equal on every DDP rank.
        zo_sparse_fraction: Sparse MeZO only: the fraction of each tensor (smallest ``|θ|``) that is perturbed and
            updated. Default 0.2, i.e. sparsity 0.8; the paper sweeps the sparsity and reports its best results at
            high sparsity (0.75-0.8 on LLaMA-7B) -- recalled from the paper, not re-checked here.
    """

    zo_method: str = field(
        default="mezo_sgd", metadata={"help": f"Zeroth-order method: one of {', '.join(ZO_METHODS)}."}
    )
    zo_eps: float = field(default=1e-3, metadata={"help": "Perturbation scale epsilon (MeZO: 1e-3 full, 1e-2 LoRA)."})
    zo_seed: int | None = field(
        default=None, metadata={"help": "Seed of the perturbation directions; None uses `seed`."}
    )
    zo_sparse_fraction: float = field(
        default=0.2,
        metadata={"help": "sparse_mezo: fraction of each tensor (smallest |w|) perturbed and updated (0 < f <= 1)."},
    )
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Must stay 0: zeroth-order training computes no gradient to clip."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.zo_method not in ZO_METHODS:
            close = difflib.get_close_matches(str(self.zo_method), ZO_METHODS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"zo_method={self.zo_method!r} is not a ZO method{hint}; valid ones are {list(ZO_METHODS)}")
        if isinstance(self.zo_eps, bool) or not isinstance(self.zo_eps, (int, float)) or not self.zo_eps > 0:
            raise ValueError(f"zo_eps={self.zo_eps!r} must be a positive number (MeZO uses 1e-3)")
        if not 0 < self.zo_sparse_fraction <= 1:
            raise ValueError(f"zo_sparse_fraction={self.zo_sparse_fraction!r} must be in (0, 1] (e.g. 0.2)")
        # Settings that only mean something with gradients: refuse them instead of silently ignoring them.
        if self.effi_optim is not None:
            raise ValueError(
                f"effi_optim={self.effi_optim!r} cannot be used with ZO training: the update rule is zo_method's; "
                "drop effi_optim (pick zo_method='zo_adam' for an adaptive update)"
            )
        if self.max_grad_norm and self.max_grad_norm > 0:
            raise ValueError(
                f"max_grad_norm={self.max_grad_norm} clips gradients, but zeroth-order training computes none; "
                "set max_grad_norm=0"
            )
        if self.activation_checkpointing or self.gradient_checkpointing:
            raise ValueError(
                "activation_checkpointing=True saves memory for a backward pass that ZO training never runs; set it "
                "to False (the forward passes already keep no activations)"
            )
        if self.fp16:
            raise ValueError(
                "fp16=True uses a gradient scaler that needs gradients, which ZO training never computes; use "
                "bf16=True or fp32"
            )
        if self.deepspeed or self.fsdp:
            raise ValueError(
                "ZOTrainer supports single-process and DDP training only: sharded parameters (deepspeed / fsdp) would "
                "each need their own seed per shard. Drop deepspeed/fsdp."
            )


class ZOTrainer(EffiTrainer):
    """A Trainer whose step is zeroth-order: two no-grad forwards per micro-batch, one seeded update per step.

    Args:
        args: :class:`ZOArguments`.
        zo_objective: optional ``callable(model, inputs) -> scalar tensor`` minimised instead of the loss (lower is
            better; it need not be differentiable). Also settable later as ``trainer.zo_objective``.
        Other arguments as ``transformers.Trainer``; ``optimizers`` and ``optimizer_cls_and_kwargs`` are refused.
    """

    def __init__(self, *args, zo_objective: Callable[[Any, dict], torch.Tensor] | None = None, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(training_args, ZOArguments):
            raise TypeError(
                f"ZOTrainer needs args=ZOArguments(...), got {type(training_args).__name__}; ZOArguments adds "
                "zo_method and zo_eps and refuses gradient-only settings"
            )
        optimizers = kwargs.get("optimizers", args[10] if len(args) > 10 else (None, None))
        if optimizers is not None and optimizers[0] is not None:
            raise ValueError(
                "ZOTrainer builds its own zeroth-order optimizer; an outer optimizer in optimizers=(...) would need "
                "gradients. Drop `optimizers` and choose the schedule with lr_scheduler_type or effi_schedule"
            )
        if optimizers is not None and optimizers[1] is not None:
            raise ValueError(
                "optimizers=(None, scheduler): the scheduler would have to wrap ZOTrainer's optimizer, which does "
                "not exist yet; choose the schedule with lr_scheduler_type or effi_schedule instead"
            )
        if kwargs.get("optimizer_cls_and_kwargs") is not None:
            raise ValueError(
                "optimizer_cls_and_kwargs cannot be used with ZOTrainer: the update rule is zo_method's; drop it"
            )
        super().__init__(*args, **kwargs)
        self.zo_objective = zo_objective
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("the model has no parameter with requires_grad=True: there is nothing to train")

    @property
    def zo_objective(self) -> Callable | None:
        return self._zo_objective

    @zo_objective.setter
    def zo_objective(self, fn: Callable | None) -> None:
        if fn is not None and not callable(fn):
            raise TypeError(f"zo_objective must be callable(model, inputs) -> scalar tensor or None, got {fn!r}")
        self._zo_objective = fn

    @property
    def zo_optimizer(self) -> ZOOptimizer | None:
        """The :class:`ZOOptimizer` (``self.optimizer`` is accelerate's wrapper around it during training)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            args = self.args
            opt_model = self.model if model is None else model
            groups = build_param_groups(opt_model, weight_decay=args.weight_decay)
            self.optimizer = ZOOptimizer(
                groups,
                lr=args.learning_rate,
                method=args.zo_method,
                eps=args.zo_eps,
                seed=args.seed if args.zo_seed is None else args.zo_seed,
                weight_decay=args.weight_decay,
                betas=(args.adam_beta1, args.adam_beta2),
                adam_eps=args.adam_epsilon,
                sparse_fraction=args.zo_sparse_fraction,
            )
        return self.optimizer

    def _zo_loss(self, model, inputs) -> torch.Tensor:
        if self._zo_objective is not None:
            value = self._zo_objective(model, inputs)
        else:
            value = self.compute_loss(model, inputs)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError(
                f"the ZO objective must return a scalar tensor, got {type(value).__name__}"
                f"{'' if not isinstance(value, torch.Tensor) else f' of shape {tuple(value.shape)}'}"
            )
        return value.reshape(())

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Two forwards at ``θ ± εz`` (eval mode: the same dropout-free network both times), queue the projected
        gradient for ``optimizer.step()``, return the mean of the two losses scaled for gradient accumulation."""
        optimizer = self.zo_optimizer
        inputs = self._prepare_inputs(inputs)
        was_training = model.training
        model.eval()
        try:
            with self.compute_loss_context_manager():
                seed, g, loss = optimizer.estimate(lambda: self._zo_loss(model, inputs))
        finally:
            model.train(was_training)
        if self.accelerator.num_processes > 1:
            # Same z on every rank: the mean of the ranks' scalars is the estimate on the global micro-batch.
            g = self.accelerator.reduce(torch.tensor(g, device=self.args.device, dtype=torch.float64), "mean").item()
        optimizer.add_estimate(seed, g)
        return loss.to(self.args.device) / self.current_gradient_accumulation_steps

    def _clip_grad_norm(self, model):
        return None

    def _get_grad_norm(self, model, grad_norm=None):
        return None  # there is no gradient; the projected gradients are in optimizer.pending before step()
