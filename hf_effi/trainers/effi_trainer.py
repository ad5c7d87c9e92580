"""``EffiTrainer``: a transformers ``Trainer`` that builds hf_effi optimizers and schedules by name.

It also makes update-inside-backward (layer-wise) optimizers behave inside Trainer: they follow accelerate's
gradient-accumulation boundaries, report the true gradient norm instead of 0, and are refused under DDP/FSDP
with an error at construction (their per-parameter hooks would update before the all-reduce).

Schedule-free optimizers (:mod:`hf_effi.optim.schedule_free`) hold the averaged weights only in eval mode. Trainer
switches to eval mode before evaluating but not before saving, so EffiTrainer saves every checkpoint and
``save_model`` in eval mode (the saved weights are the averaged ``x``, and the optimizer state records the mode, so
a resumed run continues exactly) and switches back to train mode afterwards; after ``train()`` the model holds ``x``.
A decaying schedule with a schedule-free optimizer is refused when the scheduler is created.

``effi_linear_cross_entropy=True`` patches the model's training loss to :mod:`hf_effi.losses` (no full logits), and
batches carrying ``token_weights`` (from :func:`hf_effi.data.pack` with ``loss_weighting="sequence"``) need it.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from hf_effi.losses import is_patched, patch_linear_cross_entropy
from hf_effi.optim import make_optimizer
from hf_effi.optim.lomo import FUSED_IN_BACKWARD
from hf_effi.optim.schedule_free import SCHEDULE_FREE_OPTIMIZERS, evaluation_weights, is_schedule_free
from hf_effi.schedules import make_scheduler
from hf_effi.trainers.arguments import EffiTrainingArguments

__all__ = ["EffiTrainer"]

# Schedules that never lower the learning rate after warmup: the only ones schedule-free methods accept.
_FLAT_SCHEDULES = {"constant"}
_FLAT_HF_SCHEDULES = {"constant", "constant_with_warmup"}
_TOKEN_WEIGHTS_NEED_PATCH = (
    "the data has token_weights (per-sequence loss weighting) but the model's own loss would ignore them: set "
    "effi_linear_cross_entropy=True or call hf_effi.losses.patch_linear_cross_entropy(model)"
)


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
        wants_layerwise = isinstance(self.args, EffiTrainingArguments) and (
            self.args.effi_optim_args.get("layerwise") or self.args.effi_optim in FUSED_IN_BACKWARD
        )
        if wants_layerwise or _is_layerwise(self.optimizer):
            self._check_layerwise_allowed()
        wants_schedule_free = (
            isinstance(self.args, EffiTrainingArguments)
            and self.optimizer is None
            and (self.args.effi_optim in SCHEDULE_FREE_OPTIMIZERS)
        )
        if wants_schedule_free or is_schedule_free(self.optimizer):
            self._check_schedule_free_schedule(wants_schedule_free or self.optimizer)
        if isinstance(self.args, EffiTrainingArguments) and self.args.effi_linear_cross_entropy:
            patch_linear_cross_entropy(self.model, chunk_size=self.args.effi_loss_chunk_size)
        columns = getattr(self.train_dataset, "column_names", None) or ()
        if "token_weights" in columns and not is_patched(self.model):
            raise ValueError(_TOKEN_WEIGHTS_NEED_PATCH)

    def compute_loss(self, model, inputs, *args, **kwargs):
        if "token_weights" in inputs and not is_patched(self.model):
            raise ValueError(_TOKEN_WEIGHTS_NEED_PATCH)
        return super().compute_loss(model, inputs, *args, **kwargs)

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

    def _check_schedule_free_schedule(self, optimizer) -> None:
        """Refuse a decaying schedule for a schedule-free ``optimizer`` (``True``: one that args.effi_optim names)."""
        args = self.args
        if not (optimizer is True or is_schedule_free(optimizer)) or self.lr_scheduler is not None:
            return
        effi = args.effi_schedule if isinstance(args, EffiTrainingArguments) else None
        hf = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        if (effi is not None and effi not in _FLAT_SCHEDULES) or (effi is None and hf not in _FLAT_HF_SCHEDULES):
            name = f"effi_schedule={effi!r}" if effi is not None else f"lr_scheduler_type={hf!r}"
            raise ValueError(
                f"a schedule-free optimizer cannot run with {name}: it replaces the learning-rate decay by averaging, "
                "and a decaying schedule breaks that average. Use effi_schedule='constant' (warmup via warmup_steps) "
                "or lr_scheduler_type='constant_with_warmup'."
            )

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        args = self.args
        self._check_schedule_free_schedule(self.optimizer if optimizer is None else optimizer)
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

    def _save_checkpoint(self, model, trial) -> None:
        # Trainer saves in whatever mode the last training step left; schedule-free must save the averaged x.
        with evaluation_weights(self.optimizer):
            super()._save_checkpoint(model, trial)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with evaluation_weights(self.optimizer):
            super().save_model(output_dir, _internal_call=_internal_call)

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        if is_schedule_free(self.optimizer):
            # The trained model is the average x: leave it in place for evaluate(), predict() and the user.
            getattr(self.optimizer, "optimizer", self.optimizer).eval()
        return output

    def _clip_grad_norm(self, model):
        # A layer-wise optimizer has consumed every gradient already; clipping here would see none.
        if _is_layerwise(self.optimizer):
            return None
        return super()._clip_grad_norm(model)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        # With per-token loss weights the loss is sum(w * l) / sum(w) over the whole accumulated batch, so the
        # normaliser Trainer hands the model is the weight mass of the (shifted) labelled tokens, not their count.
        if not batch_samples or not all("token_weights" in b and "labels" in b for b in batch_samples):
            return super()._get_num_items_in_batch(batch_samples, device)
        total = sum(
            (b["token_weights"][..., 1:].float() * b["labels"][..., 1:].ne(-100)).sum() for b in batch_samples
        )
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total.to(device)).sum()
        return total.to(device)

    def _get_grad_norm(self, model, grad_norm=None):
        if _is_layerwise(self.optimizer):
            # The L2 norm of the whole accumulated gradient, summed parameter by parameter inside backward.
            # Trainer asks before step(): a parameter that got no gradient on the final micro-batch is updated
            # in step() and is missing from the logged norm (in dense models every parameter gets one).
            return getattr(self.optimizer, "optimizer", self.optimizer).last_grad_norm
        return super()._get_grad_norm(model, grad_norm=grad_norm)
