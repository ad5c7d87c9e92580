"""``EffiTrainer``: a transformers ``Trainer`` that builds hf_effi optimizers and schedules by name.

It also makes update-inside-backward (layer-wise) optimizers behave inside Trainer: they follow accelerate's
gradient-accumulation boundaries, report the true gradient norm instead of 0, and are refused under DDP/FSDP
with an error at construction (their per-parameter hooks would update before the all-reduce).
"""

from __future__ import annotations

import torch
from transformers import Trainer

from hf_effi.optim import make_optimizer
from hf_effi.schedules import make_scheduler
from hf_effi.trainers.arguments import EffiTrainingArguments

__all__ = ["EffiTrainer"]


def _is_layerwise(optimizer) -> bool:
    # Trainer wraps the optimizer in accelerate's AcceleratedOptimizer, which does not forward attributes.
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return optimizer is not None and hasattr(optimizer, "set_sync_source")


class EffiTrainer(Trainer):
    """Trainer with ``args.effi_optim`` / ``args.effi_schedule`` (see :class:`EffiTrainingArguments`).

    Plain ``TrainingArguments`` work too (then it behaves as Trainer), and so does ``optimizers=hf_effi.make(...)``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Refuse impossible combinations now, not after the model has been wrapped and training has started.
        wants_layerwise = isinstance(self.args, EffiTrainingArguments) and self.args.effi_optim_args.get("layerwise")
        if wants_layerwise or _is_layerwise(self.optimizer):
            self._check_layerwise_allowed()

    def _check_layerwise_allowed(self) -> None:
        if self.args.fp16:
            raise ValueError(
                "A layer-wise (update-inside-backward) optimizer cannot run with fp16=True: the gradient scaler "
                "unscales and checks gradients for inf at step(), after the hooks have already applied them. "
                "Use bf16=True or fp32."
            )
        if self.args.world_size > 1:
            raise ValueError(
                f"A layer-wise (update-inside-backward) optimizer cannot run with world_size={self.args.world_size}: "
                "each parameter is updated as soon as its local gradient is ready, before DDP/FSDP averages it "
                "across processes, so replicas would diverge. Use layerwise=False for distributed training."
            )

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        args = self.args
        if self.optimizer is None and isinstance(args, EffiTrainingArguments) and args.effi_optim is not None:
            opt_model = self.model if model is None else model
            self.optimizer = make_optimizer(
                args.effi_optim,
                opt_model,
                lr=args.learning_rate,
                weight_decay=args.weight_decay,
                **args.effi_optim_args,
            )
        optimizer = super().create_optimizer(model)
        if _is_layerwise(optimizer):
            self._bind_layerwise(optimizer)
        return optimizer

    def _bind_layerwise(self, optimizer) -> None:
        self._check_layerwise_allowed()
        # Update exactly on accelerate's last micro-batch, whatever gradient_accumulation_steps is.
        optimizer.set_sync_source(lambda: self.accelerator.sync_gradients)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        args = self.args
        if self.lr_scheduler is None and isinstance(args, EffiTrainingArguments) and args.effi_schedule is not None:
            self.lr_scheduler = make_scheduler(
                args.effi_schedule,
                self.optimizer if optimizer is None else optimizer,
                num_training_steps=num_training_steps,
                warmup=args.get_warmup_steps(num_training_steps),
                **args.effi_schedule_args,
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def _clip_grad_norm(self, model):
        # A layer-wise optimizer has consumed every gradient already; clipping here would see none.
        if _is_layerwise(self.optimizer):
            return None
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if _is_layerwise(self.optimizer):
            # The L2 norm of the whole accumulated gradient, summed parameter by parameter inside backward.
            # Trainer asks before step(): a parameter that got no gradient on the final micro-batch is updated
            # in step() and is missing from the logged norm (in dense models every parameter gets one).
            return getattr(self.optimizer, "optimizer", self.optimizer).last_grad_norm
        return super()._get_grad_norm(model, grad_norm=grad_norm)
