"""``InfoBatchSampler``: the per-epoch pruned, reweighted order of InfoBatch, with epoch sizes known in advance.

Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024, arXiv 2303.04947.
Every sample keeps a score (its latest training loss). Each pruning epoch, a random part of the "well-learned"
samples (score below the mean) is left out, and the well-learned samples that stay are weighted up so that the
epoch's summed gradient is unbiased; the last ``1 - delta`` of the epochs use all data with weight 1 (annealing).

Where this differs from the reference code, on purpose:

* **The number pruned per epoch is fixed before training**, so Trainer knows the number of optimizer steps and
  the LR schedule ends exactly when training ends. The paper prunes ``r * |W|`` of the ``|W|`` below-mean samples,
  which is only known when the epoch starts. Here every pruning epoch leaves out exactly
  ``K = floor(r * floor(N / 2))`` samples (``r`` of an expected half of the data being well-learned), lowered to
  keep ``N - K`` a whole number of global batches (``batch_multiple``: per-device batch x accumulation x
  processes), so no pruned epoch ends in a partial window and under DDP no sample is repeated to even out ranks.
  The ``K`` are drawn uniformly from the well-learned set ``W``: the samples scored below the mean, topped up with
  the next-lowest scores when fewer than ``ceil(K / r)`` are below it (so no sample is pruned with probability
  above ``r``). The kept members of ``W`` get weight ``|W| / (|W| - K)``: each is kept with probability
  ``(|W| - K) / |W|``, so the weight makes every sample's expected contribution exactly 1 (the reference's
  ``1 / (1 - r)`` is exact only when ``r * |W|`` is a whole number). For right-skewed losses (a tail of hard
  samples; more than half below the mean) this prunes fewer samples than the paper's rule: ``r / 2`` of the data
  per pruning epoch, not ``r * |W| / N``.
* **Epoch 0 uses all data**: no sample has a score yet (the reference starts every score at 3.0, so nothing is
  below the mean in its first epoch either). Unscored samples (``NaN``) are never well-learned.
* **Pruning epochs** are ``1 <= e < floor(delta * num_epochs)``; later epochs anneal (all data, weight 1).
* **Randomness** comes from a generator seeded by ``(seed, epoch)``: an epoch's order depends only on the scores
  when it starts and on the seed, the same on every process, so ``seed`` is the only RNG state a checkpoint needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["InfoBatchSampler", "num_pruned_per_epoch", "plan_epoch"]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_prune_ratio(prune_ratio) -> float:
    """``prune_ratio`` as a float in [0, 1), or a ``ValueError`` naming it."""
    if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, (int, float)) or not 0.0 <= prune_ratio < 1.0:
        raise ValueError(
            f"infobatch_prune_ratio must be in [0, 1) (the fraction of well-learned samples left out per epoch; "
            f"the paper uses 0.5), got {prune_ratio!r}"
        )
    return float(prune_ratio)


def check_delta(delta) -> float:
    """``delta`` as a float in [0, 1], or a ``ValueError`` naming it."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta <= 1.0:
        raise ValueError(
            f"infobatch_delta must be in [0, 1] (the fraction of epochs that prune before the full-data annealing "
            f"epochs; the paper uses 0.875), got {delta!r}"
        )
    return float(delta)


def num_pruned_per_epoch(num_samples: int, prune_ratio: float, batch_multiple: int = 1) -> int:
    """``K``, the samples left out in every pruning epoch: ``floor(r * floor(N / 2))`` lowered until ``N - K`` is a
    multiple of ``batch_multiple`` (0 when that leaves nothing to prune)."""
    _check_int(num_samples, "num_samples", 1)
    _check_int(batch_multiple, "batch_multiple", 1)
    target = math.floor(check_prune_ratio(prune_ratio) * (num_samples // 2))
    kept = math.ceil((num_samples - target) / batch_multiple) * batch_multiple
    return num_samples - kept if kept < num_samples else 0


def plan_epoch(
    scores: torch.Tensor, num_pruned: int, prune_ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One pruning epoch: ``(order, weights, info)``.

    Args:
        scores: ``[N]`` float, each sample's latest loss (``NaN``: never scored).
        num_pruned: ``K``, how many well-learned samples to leave out.
        prune_ratio: ``r``; the well-learned set holds at least ``ceil(K / r)`` samples.
        generator: the source of every random draw.

    Returns:
        order: ``[N - K]`` int64, the kept dataset indices in random order.
        weights: ``[N]`` float32 loss weight by dataset index (``|W| / (|W| - K)`` for kept well-learned samples).
        info: ``well_learned`` (``|W|``), ``below_mean``, ``pruned``, ``weight``, ``mean_score``.
    """
    n = scores.numel()
    weights = torch.ones(n, dtype=torch.float32)
    if num_pruned == 0:
        return (
            torch.randperm(n, generator=generator),
            weights,
            {"well_learned": 0, "below_mean": 0, "pruned": 0, "weight": 1.0, "mean_score": None},
        )
    scored = ~torch.isnan(scores)
    mean = scores[scored].mean() if scored.any() else torch.tensor(math.nan)
    below = scored & (scores < mean)
    well_learned = below.nonzero().flatten()
    need = math.ceil(num_pruned / prune_ratio)
    if well_learned.numel() < need:  # top up with the next-lowest scores, so no sample is pruned w.p. above r
        rest = (scored & ~below).nonzero().flatten()
        rest = rest[torch.argsort(scores[rest], stable=True)]
        well_learned = torch.cat([well_learned, rest[: need - well_learned.numel()]])
    if well_learned.numel() <= num_pruned:
        raise RuntimeError(
            f"only {well_learned.numel()} of {n} samples have a score, too few to prune {num_pruned}: every sample "
            "must be trained on in epoch 0 (do not drop samples with dataloader_drop_last or a max_steps cut)"
        )
    shuffled = well_learned[torch.randperm(well_learned.numel(), generator=generator)]
    pruned, kept_well_learned = shuffled[:num_pruned], shuffled[num_pruned:]
    weight = well_learned.numel() / kept_well_learned.numel()
    weights[kept_well_learned] = weight
    keep = torch.ones(n, dtype=torch.bool)
    keep[pruned] = False
    kept = keep.nonzero().flatten()
    order = kept[torch.randperm(kept.numel(), generator=generator)]
    info = {
        "well_learned": int(well_learned.numel()),
        "below_mean": int(below.sum()),
        "pruned": num_pruned,
        "weight": weight,
        "mean_score": float(mean),
    }
    return order, weights, info


class InfoBatchSampler(Sampler[int]):
    """Yields each epoch's kept dataset indices; holds the scores and the loss weights of the epoch.

    Args:
        num_samples: ``N``, the dataset length.
        num_epochs: epochs of the whole run (pruning stops after ``floor(delta * num_epochs)``).
        prune_ratio: ``r`` in [0, 1), the fraction of well-learned samples left out (paper: 0.5).
        delta: in [0, 1], the fraction of epochs that may prune (paper: 0.875).
        batch_multiple: pruned epochs keep a multiple of this many samples (the global batch).
        seed: seeds every epoch's draw together with the epoch number.

    ``len(sampler)`` is the size of the epoch set by ``set_epoch`` (known before training: ``epoch_size(e)``).
    The trainer reports losses with ``update_scores`` and reads weights with ``loss_weights``. All state is
    tensors and numbers (``state_dict``), for ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        num_epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        batch_multiple: int = 1,
        seed: int = 0,
    ):
        self.num_samples = _check_int(num_samples, "num_samples", 1)
        self.num_epochs = _check_int(num_epochs, "num_epochs", 1)
        self.prune_ratio = check_prune_ratio(prune_ratio)
        self.delta = check_delta(delta)
        self.batch_multiple = _check_int(batch_multiple, "batch_multiple", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.num_pruned = num_pruned_per_epoch(num_samples, self.prune_ratio, batch_multiple)
        # floor with a hair of slack: 0.29 * 100 is 28.999999999999996 in floats
        self.stop_epoch = math.floor(self.delta * self.num_epochs + 1e-9)
        if self.prune_ratio > 0 and self.num_pruned == 0 and self.pruning_epochs():
            raise ValueError(
                f"infobatch_prune_ratio={self.prune_ratio} leaves out floor(r * N/2) = "
                f"{math.floor(self.prune_ratio * (num_samples // 2))} of {num_samples} samples per epoch, less than "
                f"one global batch ({batch_multiple} samples): raise the ratio, use more data or a smaller batch"
            )
        self.scores = torch.full((num_samples,), math.nan, dtype=torch.float32)
        self.weights = torch.ones(num_samples, dtype=torch.float32)
        self.epoch = 0
        self.planned_epoch = -1
        self.order = torch.empty(0, dtype=torch.long)
        self.history: list[dict] = []

    # --- the plan, known in advance ---------------------------------------------------------------------------

    def is_pruning_epoch(self, epoch: int) -> bool:
        return self.num_pruned > 0 and 1 <= epoch < self.stop_epoch

    def pruning_epochs(self) -> list[int]:
        return [e for e in range(1, min(self.stop_epoch, self.num_epochs))]

    def epoch_size(self, epoch: int) -> int:
        """Samples yielded in ``epoch``: ``N - K`` in pruning epochs, ``N`` otherwise."""
        return self.num_samples - self.num_pruned if self.is_pruning_epoch(epoch) else self.num_samples

    def epoch_sizes(self) -> list[int]:
        return [self.epoch_size(e) for e in range(self.num_epochs)]

    # --- Sampler protocol --------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int(epoch, "epoch", 0)

    def __len__(self) -> int:
        return self.epoch_size(self.epoch)

    def __iter__(self) -> Iterator[int]:
        if self.planned_epoch != self.epoch:  # a resumed run replays the saved plan of its current epoch
            self._plan(self.epoch)
        yield from self.order.tolist()

    def _plan(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        if self.is_pruning_epoch(epoch):
            self.order, self.weights, info = plan_epoch(self.scores, self.num_pruned, self.prune_ratio, generator)
        else:
            self.order = torch.randperm(self.num_samples, generator=generator)
            self.weights = torch.ones(self.num_samples, dtype=torch.float32)
            info = {"well_learned": 0, "below_mean": 0, "pruned": 0, "weight": 1.0, "mean_score": None}
        self.planned_epoch = epoch
        self.history.append({"epoch": epoch, "samples": int(self.order.numel()), **info})

    # --- scores and weights ------------------------------------------------------------------------------------

    def update_scores(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Record each sample's latest loss (``indices`` ``[n]`` int, ``losses`` ``[n]``; NaN losses are skipped)."""
        indices = indices.detach().reshape(-1).long().cpu()
        losses = losses.detach().reshape(-1).float().cpu()
        valid = ~torch.isnan(losses)
        self.scores[indices[valid]] = losses[valid]

    def loss_weights(self, indices: torch.Tensor) -> torch.Tensor:
        """``[n]`` float32 weights of these dataset indices in the current epoch."""
        return self.weights[indices.detach().reshape(-1).long().cpu()]

    # --- checkpoint --------------------------------------------------------------------------------------------

    def _config(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "num_epochs": self.num_epochs,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "batch_multiple": self.batch_multiple,
            "seed": self.seed,
        }

    def state_dict(self) -> dict:
        return {
            **self._config(),
            "scores": self.scores.clone(),
            "weights": self.weights.clone(),
            "order": self.order.clone(),
            "planned_epoch": self.planned_epoch,
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state.get(k) for k in self._config()}
        if saved != self._config():
            raise ValueError(
                f"the checkpoint's InfoBatch state was made with {saved}, this run has {self._config()}: resume with "
                "the same dataset, batch size, processes, epochs, prune ratio, delta and seed"
            )
        self.scores = state["scores"].clone().float()
        self.weights = state["weights"].clone().float()
        self.order = state["order"].clone().long()
        self.planned_epoch = int(state["planned_epoch"])
        self.epoch = int(state["epoch"])
        self.history = [dict(h) for h in state["history"]]
