"""``GradNormLogger``: per-step l2 and l1 gradient norms, before clipping, for a refined schedule.

Defazio et al., "When, Why and How Much? Adaptive Learning Rate Scheduling by Refinement" (arXiv 2310.07831)
refine the next run's schedule from the gradient norms of this one: l2 for SGD, l1 for Adam-type optimizers
(:func:`hf_effi.schedules.refine`). Trainer only logs the l2 norm, and only every ``logging_steps``.

Why the norms are the pre-clip ones. Trainer clips in place *before* ``on_pre_optimizer_step``, so the gradients a
callback sees there are ``c * g`` with one clip factor ``c = min(1, max_grad_norm / (||g||_2 + 1e-6))`` for every
parameter. The logger measures two things:

- a post-accumulate-grad hook on every trainable parameter stores ``||g_p||_2^2`` each time backward accumulates
  into ``p.grad``; the value from the last micro-batch of an optimizer step is that of the full accumulated gradient,
  so their sum at ``on_pre_optimizer_step`` is the pre-clip ``||g||_2^2`` (this is what Trainer logs as
  ``grad_norm``);
- at ``on_pre_optimizer_step`` it reads the clipped ``||c g||_1`` and ``||c g||_2`` from ``p.grad``, and recovers
  ``c = ||c g||_2 / ||g||_2`` and the pre-clip ``||g||_1 = ||c g||_1 / c`` (both norms scale by the same ``c``).

Without clipping (``max_grad_norm=0``) both norms are read from ``p.grad`` directly, which under DDP are the
all-reduced gradients. With clipping, the hooks see each process's local gradient before DDP averages it, and under
fp16 the loss-scaled one; both are refused at ``on_train_begin`` with an error that says so. A layer-wise
(update-in-backward) optimizer frees gradients inside backward, so nothing is left to read: refused too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

__all__ = ["GradNormLogger"]


class GradNormLogger(TrainerCallback):
    """Records ``{"step", "lr", "grad_norm_l2", "grad_norm_l1"}`` for every optimizer step (pre-clip norms).

    Args:
        path: optional JSONL file written at the end of training (by the main process only).

    Attributes:
        records: the rows so far; ``step`` counts optimizer steps from 1 as Trainer's ``log_history`` does, ``lr``
            is the learning rate of the first param group used by that update.

    Example::

        logger = GradNormLogger("norms.jsonl")
        EffiTrainer(model=model, args=args, train_dataset=ds, callbacks=[logger]).train()
        next_args = EffiTrainingArguments(..., effi_schedule="refined", effi_schedule_args=refine(logger))
    """

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.records: list[dict] = []
        self._handles: list = []
        self._squares: dict[int, torch.Tensor] = {}
        self._clipping = False

    def _store_square(self, param: torch.Tensor) -> None:
        if param.grad is not None:
            self._squares[id(param)] = param.grad.detach().float().pow(2).sum()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if getattr(args, "effi_optim_args", None) and args.effi_optim_args.get("layerwise"):
            raise ValueError(
                "GradNormLogger reads gradients at on_pre_optimizer_step, but layerwise=True updates and frees them "
                "inside backward; log a run with layerwise=False to build a refined schedule"
            )
        self._clipping = bool(args.max_grad_norm and args.max_grad_norm > 0)
        if self._clipping and args.fp16:
            raise ValueError(
                f"GradNormLogger with max_grad_norm={args.max_grad_norm} and fp16=True: its hooks would see "
                "loss-scaled gradients, so the pre-clip norm is unknown; use bf16=True or max_grad_norm=0"
            )
        if self._clipping and args.world_size > 1:
            raise ValueError(
                f"GradNormLogger with max_grad_norm={args.max_grad_norm} on {args.world_size} processes: the "
                "pre-clip norm comes from hooks that see each process's local gradient before DDP averages it; set "
                "max_grad_norm=0 (norms are then read from the averaged gradients) or log on one process"
            )
        self._remove_hooks()
        self._squares.clear()
        if self._clipping:
            if model is None:
                raise ValueError("GradNormLogger needs the model at on_train_begin (Trainer passes it)")
            self._handles = [
                p.register_post_accumulate_grad_hook(self._store_square) for p in model.parameters() if p.requires_grad
            ]

    def on_step_begin(self, args, state, control, **kwargs):
        self._squares.clear()  # a parameter without a gradient this step must not report last step's

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            raise ValueError(
                "GradNormLogger found no gradients at on_pre_optimizer_step (an optimizer that updates inside "
                "backward consumes them); log a run with an ordinary optimizer"
            )
        l1 = torch.stack([g.detach().float().abs().sum() for g in grads]).sum()
        l2 = torch.stack([g.detach().float().pow(2).sum() for g in grads]).sum().sqrt()
        if self._clipping and self._squares:
            pre_l2 = torch.stack(list(self._squares.values())).sum().sqrt()
            # Same clip factor c on every parameter: ||c g||_2 / ||g||_2 = c, so ||g||_1 = ||c g||_1 / c.
            l1 = l1 * pre_l2 / l2 if float(l2) > 0 else l1
            l2 = pre_l2
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        self.records.append(
            {
                "step": state.global_step + 1,
                "lr": None if lr is None else float(lr),
                "grad_norm_l2": float(l2),
                "grad_norm_l1": float(l1),
            }
        )
        self._squares.clear()

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hooks()
        if self.path is not None and state.is_world_process_zero:
            self.save(self.path)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def save(self, path: str | Path) -> Path:
        """Write the records as JSON lines (one per optimizer step); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        return path
