"""``LayerSelectionTrainer``: the shared base of trainers that change *which* parameters train during a run (LISA, HFT).

A subclass names the switchable parameter groups (``selection_groups``), the parameters that always train
(``always_trainable``) and how to draw the active groups (``sample_active``). The base does the bookkeeping that the
reference implementations get wrong:

- The optimizer is built over every parameter that can ever train (all candidates have ``requires_grad=True`` when
  ``create_optimizer`` runs), so a layer activated later is in the optimizer. Freezing before the optimizer exists
  trains nothing (LMFlow #726).
- Switching happens in ``on_step_begin``, i.e. before the first micro-batch of an optimizer step, so every
  micro-batch of one accumulation window sees the same active set.
- A deactivated parameter gets ``requires_grad=False``, its ``.grad`` is dropped and its optimizer state is deleted
  (``optimizer.state[p]`` is emptied and removed). Optimizers skip parameters without a gradient, so a frozen
  parameter keeps no state; on reactivation its state is recreated fresh (moments at zero, step counter at zero),
  as if the layer joined the run then. Memory therefore follows the active set instead of creeping back to full
  AdamW (LMFlow #729/#768).
- The active groups and the private ``torch.Generator`` that draws them are saved in every checkpoint
  (``layer_selection.pt``, tensors/strings only, loadable with ``weights_only=True``) and restored on
  ``resume_from_checkpoint``, so a resumed run draws the same sequence. Every process seeds the generator alike
  and draws at the same steps, so DDP ranks agree without communication.
- Activation checkpointing works in both modes: non-reentrant (the default) needs nothing, and for
  ``use_reentrant=True`` transformers 5.23 already makes the embedding output require grad, so a checkpointed
  active layer after frozen ones still gets gradients (both tested).

Refused at construction, with the reason: DeepSpeed and FSDP (they flatten or shard parameters at wrap time, so
per-tensor ``requires_grad`` switching is unsupported), DDP without ``ddp_find_unused_parameters=True`` (frozen
layers produce no gradient), and schedule-free optimizers (their state holds the averaging sequence of the weights;
dropping it would change the weights, not just free memory).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from transformers import TrainerCallback

from hf_effi.optim.schedule_free import SCHEDULE_FREE_OPTIMIZERS, is_schedule_free
from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.effi_trainer import EffiTrainer

__all__ = ["SELECTION_FILE", "LayerSelectionTrainer", "drop_optimizer_state", "trainable_parameter_count"]

SELECTION_FILE = "layer_selection.pt"


def _unwrap_optimizer(optimizer):
    # accelerate's AcceleratedOptimizer keeps the real optimizer in .optimizer
    return getattr(optimizer, "optimizer", optimizer)


def drop_optimizer_state(optimizer, params: Sequence[torch.Tensor]) -> None:
    """Delete the optimizer state of ``params`` (and free it: the state dict is emptied first, so an inner optimizer
    that shares the same dict, as :class:`~hf_effi.optim.backward_step.LayerwiseOptimizer` does, lets go too)."""
    optimizer = _unwrap_optimizer(optimizer)
    if optimizer is None:
        return
    for p in params:
        state = optimizer.state.get(p)
        if state is not None:
            state.clear()
            del optimizer.state[p]


def trainable_parameter_count(model: nn.Module) -> int:
    """Elements of the unique parameters with ``requires_grad`` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _SwitchCallback(TrainerCallback):
    """Forwards Trainer's step-boundary event to the trainer that owns the selection."""

    def __init__(self, trainer: LayerSelectionTrainer):
        self._trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self._trainer._on_train_begin(kwargs.get("train_dataloader"))

    def on_step_begin(self, args, state, control, **kwargs):
        self._trainer._on_step_begin(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._trainer._on_train_end()


class LayerSelectionTrainer(EffiTrainer):
    """An :class:`EffiTrainer` that trains only a changing subset of parameter groups (base of LISA and HFT).

    Subclasses implement :meth:`selection_groups`, :meth:`always_trainable`, :meth:`sample_active`,
    :meth:`interval_steps` and :meth:`selection_seed`. Parameters in no group and not always trainable are frozen
    at construction (a fixed policy, e.g. LISA's ``lisa_embeddings_and_head="freeze"``) and stay frozen. After
    ``train()`` every switchable parameter has ``requires_grad=True`` again; ``active_groups`` keeps the last selection and
    ``selection_history`` lists ``(global_step, active groups)`` for every draw of this ``train()`` call.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._check_selection_supported()
        model = self.model
        groups = self.selection_groups(model)
        always = set(self.always_trainable(model))
        by_name = dict(model.named_parameters())  # unique parameters: a tied weight appears once
        self._groups: dict[str, list[nn.Parameter]] = {}
        grouped: set[str] = set()
        for group, names in groups.items():
            params = [by_name[n] for n in names if n in by_name and by_name[n].requires_grad]
            if params:
                self._groups[group] = params
                grouped.update(n for n in names if n in by_name)
        if not self._groups:
            raise ValueError(f"{type(self).__name__} found no trainable parameter to select from in this model")
        # Parameters that are neither switchable nor always on never train: freeze them now, so the optimizer never
        # holds them (this is a fixed policy, not a per-step switch).
        for name, p in by_name.items():
            if name not in grouped and name not in always:
                p.requires_grad_(False)
        self._candidates = [p for params in self._groups.values() for p in params]
        self.selection_generator = torch.Generator().manual_seed(int(self.selection_seed()))
        self.active_groups: tuple[str, ...] | None = None
        self.selection_history: list[tuple[int, tuple[str, ...]]] = []
        self._needs_apply = True
        self._steps_per_epoch: int | None = None
        self.add_callback(_SwitchCallback(self))

    # -- what subclasses define -----------------------------------------------------------------------------------
    def selection_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """Switchable groups: group name -> parameter names (as in ``model.named_parameters()``)."""
        raise NotImplementedError

    def always_trainable(self, model: nn.Module) -> list[str]:
        """Parameter names that train at every step; everything else outside the groups is frozen."""
        raise NotImplementedError

    def sample_active(self, group_names: list[str], generator: torch.Generator) -> list[str]:
        """The groups to activate for the next interval, drawn with ``generator`` only."""
        raise NotImplementedError

    def interval_steps(self) -> int:
        """Optimizer steps between draws; 0 means once per epoch."""
        raise NotImplementedError

    def selection_seed(self) -> int:
        raise NotImplementedError

    # -- checks ---------------------------------------------------------------------------------------------------
    def _check_selection_supported(self) -> None:
        name = type(self).__name__
        args = self.args
        if args.deepspeed:
            raise ValueError(f"{name} cannot run with deepspeed: ZeRO partitions parameters at initialisation and "
                             "does not support switching requires_grad per layer during training. Drop deepspeed.")
        if args.fsdp:
            raise ValueError(f"{name} cannot run with fsdp: FSDP flattens parameters when it wraps the model, so "
                             "layers cannot be frozen and unfrozen one by one. Use DDP or a single process.")
        if args.world_size > 1 and not args.ddp_find_unused_parameters:
            raise ValueError(f"{name} with world_size={args.world_size} needs ddp_find_unused_parameters=True: "
                             "frozen layers produce no gradient, which DDP otherwise waits for forever.")
        wants = isinstance(args, EffiTrainingArguments) and args.effi_optim in SCHEDULE_FREE_OPTIMIZERS
        if wants or is_schedule_free(self.optimizer):
            raise ValueError(f"{name} cannot use a schedule-free optimizer: its state holds the weight-averaging "
                             "sequence, so dropping the state of a frozen layer would change its weights. Use e.g. "
                             "effi_optim='adamw'.")

    # -- the switch -----------------------------------------------------------------------------------------------
    def _on_train_begin(self, train_dataloader) -> None:
        self.selection_history = []
        if train_dataloader is not None and self.interval_steps() == 0:
            ga = self.args.gradient_accumulation_steps
            self._steps_per_epoch = max(-(-len(train_dataloader) // ga), 1)

    def _interval(self) -> int:
        interval = self.interval_steps()
        if interval == 0:
            return self._steps_per_epoch or 1
        return interval

    def _on_step_begin(self, global_step: int) -> None:
        if self.active_groups is None or global_step % self._interval() == 0:
            names = list(self._groups)
            active = sorted(set(self.sample_active(names, self.selection_generator)), key=names.index)
            self.active_groups = tuple(active)
            self.selection_history.append((global_step, self.active_groups))
            self._needs_apply = True
        if self._needs_apply:
            self.apply_selection(self.active_groups)
            self._needs_apply = False

    def apply_selection(self, active: Sequence[str]) -> None:
        """Train exactly the groups ``active``: the others lose ``requires_grad``, ``.grad`` and optimizer state."""
        unknown = [g for g in active if g not in self._groups]
        if unknown:
            raise ValueError(f"unknown selection groups {unknown}; valid ones are {list(self._groups)}")
        active = set(active)
        frozen = []
        for group, params in self._groups.items():
            on = group in active
            for p in params:
                p.requires_grad_(on)
                if not on:
                    p.grad = None
                    frozen.append(p)
        drop_optimizer_state(self.optimizer, frozen)

    def _on_train_end(self) -> None:
        for p in self._candidates:
            p.requires_grad_(True)
        self._needs_apply = True

    @property
    def group_names(self) -> list[str]:
        """The switchable groups, in model order."""
        return list(self._groups)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save and self.active_groups is not None:
            torch.save(
                {"active_groups": list(self.active_groups), "generator_state": self.selection_generator.get_state(),
                 "groups": list(self._groups)},
                os.path.join(output_dir, SELECTION_FILE),
            )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None:
            path = os.path.join(checkpoint, SELECTION_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"resume_from_checkpoint={checkpoint!r} has no {SELECTION_FILE}: it was not written by "
                                 f"{type(self).__name__}, so the layer sequence cannot be continued. Start a new run "
                                 "from its weights instead of resuming.")
            saved = torch.load(path, weights_only=True)
            if saved["groups"] != list(self._groups):
                raise ValueError(f"{path} selects among other groups than this model has ({len(saved['groups'])} vs "
                                 f"{len(self._groups)}); resume with the same model and selection settings")
            self.selection_generator.set_state(saved["generator_state"])
            self.active_groups = tuple(saved["active_groups"])
            self._needs_apply = True
            self.apply_selection(self.active_groups)
        super()._load_optimizer_and_scheduler(checkpoint)
