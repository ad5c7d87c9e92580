"""``InfoBatchTrainer``: InfoBatch dynamic data pruning inside Trainer, with a correct step count and LR schedule.

Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024, arXiv 2303.04947.
The pruning rule and where it departs from the reference code are in :mod:`hf_effi.trainers.infobatch_sampler`.

How it plugs into Trainer, without patching anything:

* **Data.** The training dataloader yields each row with its dataset index (``infobatch_index``, added around the
  user's collator); an :class:`InfoBatchSampler` gives the epoch's order. Under DDP every process draws the same
  order (same scores, same seed) and accelerate splits its batches, so each sample goes to exactly one process.
* **Loss.** ``compute_loss`` takes the mean token loss of every row (causal LM; override ``per_sample_loss`` for
  other tasks), records it as the row's score (gathered from all processes, so every process keeps the same
  scores), and returns ``mean(weight * loss)`` over the micro-batch; Trainer divides it by the accumulation steps.
  The per-step normalisation stays the batch size, so a pruning epoch's summed gradient is unbiased for the full
  epoch's, in fewer steps (as in the paper).
* **Steps and schedule.** Pruning epochs are ``N - K`` samples, a whole number of global batches, known before
  training; ``max_steps`` (and so the scheduler's total steps) is the sum of the real per-epoch step counts, and
  Trainer's epoch loop simply finds the shorter epochs' iterators exhausted. Set ``num_train_epochs`` (a whole
  number), not ``max_steps``.
* **Resume.** Scores, the current epoch's order and weights are saved as ``infobatch_state.pt`` (tensors only) next
  to the optimizer; the epoch's randomness is seeded by ``(seed, epoch)``. A resumed run continues exactly.
* **Evaluation** batches carry no index and go through Trainer's own ``compute_loss``: nothing is pruned or weighted.

The logged training loss of a pruning epoch is the weighted loss. ``trainer.infobatch_samples_trained`` counts the
rows this process ran forward and backward; ``trainer.infobatch_sampler.history`` holds each epoch's plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset
from transformers import TrainerCallback
from transformers.trainer_utils import seed_worker

from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.effi_trainer import EffiTrainer
from hf_effi.trainers.infobatch_sampler import InfoBatchSampler, check_delta, check_prune_ratio

__all__ = ["INDEX_KEY", "InfoBatchArguments", "InfoBatchTrainer", "causal_lm_sample_losses"]

INDEX_KEY = "infobatch_index"
STATE_NAME = "infobatch_state.pt"


@dataclass
class InfoBatchArguments(EffiTrainingArguments):
    """EffiTrainingArguments plus InfoBatch's two settings (paper defaults).

    Args:
        infobatch_prune_ratio: fraction ``r`` in [0, 1) of the well-learned samples left out in each pruning epoch;
            every pruning epoch leaves out ``floor(r * N/2)`` samples (rounded to whole global batches).
        infobatch_delta: fraction in [0, 1] of the epochs that may prune; the rest use all data (annealing).
    """

    infobatch_prune_ratio: float = field(
        default=0.5, metadata={"help": "InfoBatch: fraction in [0, 1) of well-learned samples left out per epoch."}
    )
    infobatch_delta: float = field(
        default=0.875, metadata={"help": "InfoBatch: fraction in [0, 1] of epochs that prune; the rest anneal."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.infobatch_prune_ratio = check_prune_ratio(self.infobatch_prune_ratio)
        self.infobatch_delta = check_delta(self.infobatch_delta)
        if self.max_steps > 0:
            raise ValueError(
                f"InfoBatch plans whole epochs (pruning, then full-data annealing): set num_train_epochs and leave "
                f"max_steps unset, got max_steps={self.max_steps}"
            )
        if self.num_train_epochs < 1 or self.num_train_epochs != int(self.num_train_epochs):
            raise ValueError(
                f"InfoBatch needs a whole number of epochs >= 1, got num_train_epochs={self.num_train_epochs}"
            )
        strategy = getattr(self, "train_sampling_strategy", "random")
        if strategy != "random":
            raise ValueError(
                f"InfoBatch draws its own order each epoch: train_sampling_strategy must be 'random', got {strategy!r}"
            )


def causal_lm_sample_losses(logits: torch.Tensor, labels: torch.Tensor, shift_labels: torch.Tensor | None = None):
    """Mean next-token loss of every row: ``[B]`` float32, and the ``[B]`` count of predicted tokens.

    ``logits`` ``[B, T, V]``; ``labels`` ``[B, T]`` (position ``t`` predicts label ``t + 1``; -100 ignored) or
    ``shift_labels`` ``[B, T]`` already aligned with the logits. A row with no label scores 0 with count 0.
    """
    if shift_labels is None:
        shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    batch, length, vocab = logits.shape
    token_loss = F.cross_entropy(
        logits.float().reshape(-1, vocab),
        shift_labels.reshape(-1).to(logits.device),
        ignore_index=-100,
        reduction="none",
    ).view(batch, length)
    counts = (shift_labels != -100).sum(dim=1).to(token_loss.device)
    return token_loss.sum(dim=1) / counts.clamp(min=1), counts


class _IndexedDataset(Dataset):
    """``dataset[i]`` plus its index under ``INDEX_KEY``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], INDEX_KEY: index}


class _IndexCollator:
    """Takes the indices out of the rows, collates the rest with the user's collator, adds them back as a tensor."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        indices = torch.tensor([f[INDEX_KEY] for f in features], dtype=torch.long)
        batch = self.collator([{k: v for k, v in f.items() if k != INDEX_KEY} for f in features])
        batch[INDEX_KEY] = indices
        return batch


class _EpochOfStep(TrainerCallback):
    """Sets the sampler's epoch at each epoch start and keeps ``state.epoch`` true for shorter pruning epochs."""

    def __init__(self, trainer: InfoBatchTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.infobatch_sampler is not None:
            self.trainer.infobatch_sampler.set_epoch(self.trainer._epoch_of_step(state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer._epoch_steps:
            state.epoch = self.trainer._progress(state.global_step)


class InfoBatchTrainer(EffiTrainer):
    """EffiTrainer with InfoBatch pruning; takes :class:`InfoBatchArguments` (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, InfoBatchArguments):
            raise TypeError(
                f"InfoBatchTrainer needs InfoBatchArguments (with infobatch_prune_ratio, infobatch_delta), got "
                f"{type(self.args).__name__}"
            )
        if self.train_dataset is not None and (
            isinstance(self.train_dataset, IterableDataset) or not hasattr(self.train_dataset, "__len__")
        ):
            raise ValueError("InfoBatch scores samples by index: train_dataset must be map-style (have __len__)")
        if self.args.accelerator_config.dispatch_batches:
            raise ValueError("InfoBatch needs every process to draw the order itself: set dispatch_batches=False")
        # compute_loss returns a per-micro-batch mean; Trainer divides it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self.infobatch_sampler: InfoBatchSampler | None = None
        self.infobatch_samples_trained = 0
        self._epoch_steps: list[int] = []
        self.add_callback(_EpochOfStep(self))

    # --- data -------------------------------------------------------------------------------------------------

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("InfoBatchTrainer: training requires a train_dataset.")
        import datasets

        args = self.args
        dataset, collator = self.train_dataset, self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        self.infobatch_sampler = InfoBatchSampler(
            len(dataset),
            num_epochs=int(args.num_train_epochs),
            prune_ratio=args.infobatch_prune_ratio,
            delta=args.infobatch_delta,
            batch_multiple=self.get_total_train_batch_size(args),
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )
        loader = DataLoader(
            _IndexedDataset(dataset),
            batch_size=self._train_batch_size,
            sampler=self.infobatch_sampler,
            collate_fn=_IndexCollator(collator),
            drop_last=args.dataloader_drop_last,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        return self.accelerator.prepare(loader)

    # --- step count -------------------------------------------------------------------------------------------

    def set_initial_training_values(self, args, dataloader):
        epochs, full_steps, examples, _, total_batch, steps_in_epoch, _ = super().set_initial_training_values(
            args, dataloader
        )
        sampler = self.infobatch_sampler
        # Pruned epochs are whole global batches; full epochs take as many steps as Trainer counts for them.
        self._epoch_steps = [
            size // total_batch if sampler.is_pruning_epoch(e) else full_steps
            for e, size in enumerate(sampler.epoch_sizes())
        ]
        max_steps = sum(self._epoch_steps)
        return epochs, full_steps, examples, sum(sampler.epoch_sizes()), total_batch, steps_in_epoch, max_steps

    def _epoch_of_step(self, global_step: int) -> int:
        done = 0
        for epoch, steps in enumerate(self._epoch_steps):
            if global_step < done + steps:
                return epoch
            done += steps
        return len(self._epoch_steps)

    def _progress(self, global_step: int) -> float:
        """Epochs done after ``global_step`` optimizer steps, counting each epoch in its own steps."""
        epoch = self._epoch_of_step(global_step)
        if epoch >= len(self._epoch_steps):
            return float(len(self._epoch_steps))
        done = sum(self._epoch_steps[:epoch])
        return epoch + (global_step - done) / self._epoch_steps[epoch]

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is not None and self.state.global_step > 0:
            # Trainer assumes equal epochs; find the epoch and the micro-batches done in it from the real sizes.
            epochs_trained = self._epoch_of_step(self.state.global_step)
            done = sum(self._epoch_steps[:epochs_trained])
            steps_in_epoch = (
                0
                if self.args.ignore_data_skip
                else ((self.state.global_step - done) * self.args.gradient_accumulation_steps)
            )
        return epochs_trained, steps_in_epoch

    # --- loss -------------------------------------------------------------------------------------------------

    def per_sample_loss(self, model, inputs: dict) -> tuple[torch.Tensor, object]:
        """``([B] loss of each row, model outputs)``: the mean next-token loss (causal LM). Override for other tasks."""
        inputs = dict(inputs)
        labels, shift_labels = inputs.pop("labels", None), inputs.pop("shift_labels", None)
        if labels is None and shift_labels is None:
            raise ValueError("InfoBatchTrainer needs 'labels' in every training batch to score each sample")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        losses, counts = causal_lm_sample_losses(logits, labels, shift_labels)
        return losses.masked_fill(counts == 0, float("nan")), outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if INDEX_KEY not in inputs:  # evaluation and prediction: Trainer's own loss, unpruned and unweighted
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        indices = inputs.pop(INDEX_KEY)
        losses, outputs = self.per_sample_loss(model, inputs)
        self._record_scores(indices, losses.detach())
        weights = self.infobatch_sampler.loss_weights(indices).to(losses.device)
        # A row with no label token (NaN) contributes nothing, as in a token-averaged loss.
        loss = (torch.nan_to_num(losses, nan=0.0) * weights).mean()
        self.infobatch_samples_trained += int(indices.numel())
        return (loss, outputs) if return_outputs else loss

    def _record_scores(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        if self.accelerator.num_processes > 1:  # every process keeps every score, so all draw the same order
            indices = self.accelerator.pad_across_processes(indices, pad_index=-1)
            losses = self.accelerator.pad_across_processes(losses, pad_index=float("nan"))
            indices, losses = self.accelerator.gather(indices), self.accelerator.gather(losses)
            losses = losses[indices >= 0]
            indices = indices[indices >= 0]
        self.infobatch_sampler.update_scores(indices, losses)

    # --- checkpoint -------------------------------------------------------------------------------------------

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.infobatch_sampler is not None and self.args.should_save:
            torch.save(self.infobatch_sampler.state_dict(), os.path.join(output_dir, STATE_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.infobatch_sampler is None:
            return
        path = os.path.join(checkpoint, STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint} has no {STATE_NAME}: it was not saved by InfoBatchTrainer (or with save_only_model), "
                "so the sample scores cannot be restored; resume from an InfoBatchTrainer checkpoint"
            )
        self.infobatch_sampler.load_state_dict(torch.load(path, weights_only=True))
