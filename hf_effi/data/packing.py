"""Bin-pack variable-length samples into fixed-budget sequences whose attention never crosses a sample boundary.

    packed = hf_effi.data.pack(dataset, max_length=2048, strategy="ffd")
    trainer = EffiTrainer(model, args, train_dataset=packed, data_collator=hf_effi.data.PackedCollator())

Each packed row holds ``input_ids``, ``labels`` (the first token of every sample is ``-100``, so no sample is
trained to predict the next sample's first token), ``position_ids`` that restart at 0 for every sample, and
``seq_lengths``. transformers (5.x, eager/SDPA/flex attention, and flash-attention through ``cu_seq_lens``) reads
restarting ``position_ids`` as sample boundaries and builds a block-diagonal causal mask, provided no
``attention_mask`` is passed and no cache is used (Trainer sets ``use_cache=False``; custom loops must too).

Loss weighting: ``"token"`` (default) averages over all labelled tokens of the batch, as unpacked training with the
same tokens would; ``"sequence"`` adds ``token_weights`` = 1 / (labelled tokens of the sample), so every sample
counts equally whatever its length (the mean of per-sample means, as SFT recipes usually report). The weights are
used by hf_effi's memory-light loss (``EffiTrainingArguments(effi_linear_cross_entropy=True)``), which also makes
Trainer normalise gradient accumulation by the weight mass.

Strategies: ``"ffd"`` first-fit decreasing (longest first, each into the first bin with room; a segment tree makes
it O(n log n)) packs tightest; ``"greedy"`` keeps the dataset order and starts a new bin when the next sample does
not fit (next-fit), which preserves locality but wastes more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset

__all__ = ["PackedCollator", "STRATEGIES", "pack", "pack_bins", "padding_efficiency"]

STRATEGIES = ("ffd", "greedy")
OVERFLOW = ("error", "truncate")
WEIGHTING = ("token", "sequence")


class _MaxTree:
    """Segment tree over bin capacities: the leftmost bin with at least ``need`` room, in O(log n)."""

    def __init__(self, n: int, capacity: int):
        self.size = 1
        while self.size < max(n, 1):
            self.size *= 2
        self.tree = [capacity] * (2 * self.size)

    def first_fit(self, need: int) -> int:
        if self.tree[1] < need:
            raise AssertionError("unreachable: a fresh bin always fits a sample of at most max_length tokens")
        i = 1
        while i < self.size:
            i = 2 * i if self.tree[2 * i] >= need else 2 * i + 1
        return i - self.size

    def take(self, leaf: int, amount: int) -> None:
        i = leaf + self.size
        self.tree[i] -= amount
        i //= 2
        while i:
            self.tree[i] = max(self.tree[2 * i], self.tree[2 * i + 1])
            i //= 2


def pack_bins(lengths: Sequence[int], max_length: int, strategy: str = "ffd") -> list[list[int]]:
    """Group sample indices into bins of at most ``max_length`` tokens; every length must be <= max_length."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "greedy":
        bins: list[list[int]] = []
        room = 0
        for i, n in enumerate(lengths):
            if not bins or n > room:
                bins.append([])
                room = max_length
            bins[-1].append(i)
            room -= n
        return bins
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    tree = _MaxTree(len(lengths), max_length)
    bins = []
    for i in order:
        b = tree.first_fit(lengths[i])
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        tree.take(b, lengths[i])
    return bins


def _rows(dataset: Any, input_column: str) -> list[Mapping[str, Any]]:
    if isinstance(dataset, Dataset):
        if input_column not in dataset.column_names:
            raise ValueError(f"dataset has no {input_column!r} column (columns: {dataset.column_names}); "
                             "tokenize it first or pass input_column=")
        return list(dataset)
    if isinstance(dataset, Iterable) and not isinstance(dataset, (str, bytes, Mapping)):
        rows = list(dataset)
        if rows and not all(isinstance(r, Mapping) and input_column in r for r in rows):
            raise ValueError(f"every sample must be a mapping with an {input_column!r} list of token ids")
        return rows
    raise ValueError(f"dataset must be a datasets.Dataset or a list of dicts, got {type(dataset).__name__}")


def pack(
    dataset: Dataset | Iterable[Mapping[str, Any]],
    max_length: int,
    *,
    strategy: str = "ffd",
    overflow: str = "error",
    loss_weighting: str = "token",
    input_column: str = "input_ids",
    label_column: str | None = "labels",
) -> Dataset:
    """Pack tokenized samples into rows of at most ``max_length`` tokens (see the module docstring).

    Args:
        dataset: rows with ``input_ids`` (and optionally ``labels``; ``-100`` marks untrained tokens, e.g. prompts).
        max_length: token budget per packed row.
        strategy: ``"ffd"`` (first-fit decreasing) or ``"greedy"`` (next-fit in dataset order).
        overflow: a sample longer than ``max_length``: ``"error"`` (default) or ``"truncate"`` (keep its first
            ``max_length`` tokens).
        loss_weighting: ``"token"`` or ``"sequence"`` (adds ``token_weights``).
        label_column: column with labels (used when present); ``None`` trains on every token.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    if loss_weighting not in WEIGHTING:
        raise ValueError(f"loss_weighting must be one of {WEIGHTING}, got {loss_weighting!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    samples = []
    for i, row in enumerate(_rows(dataset, input_column)):
        ids = list(row[input_column])
        labels = list(row[label_column]) if label_column and label_column in row else list(ids)
        if len(labels) != len(ids):
            raise ValueError(f"sample {i}: {label_column!r} has {len(labels)} entries for {len(ids)} tokens")
        if not ids:
            continue
        if len(ids) > max_length:
            if overflow == "error":
                raise ValueError(f"sample {i} has {len(ids)} tokens > max_length={max_length}; raise max_length or "
                                 "pass overflow='truncate'")
            ids, labels = ids[:max_length], labels[:max_length]
        samples.append((ids, labels))
    bins = pack_bins([len(ids) for ids, _ in samples], max_length, strategy)
    columns: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
    if loss_weighting == "sequence":
        columns["token_weights"] = []
    for members in bins:
        ids_row, labels_row, pos_row, lengths, weights_row = [], [], [], [], []
        for j in members:
            ids, labels = samples[j]
            labels = [-100, *labels[1:]]  # the first token is predicted from the previous sample: never train it
            ids_row += ids
            labels_row += labels
            pos_row += range(len(ids))
            lengths.append(len(ids))
            trained = sum(lab != -100 for lab in labels)
            weights_row += [1.0 / trained if trained else 0.0] * len(ids)
        columns["input_ids"].append(ids_row)
        columns["labels"].append(labels_row)
        columns["position_ids"].append(pos_row)
        columns["seq_lengths"].append(lengths)
        if loss_weighting == "sequence":
            columns["token_weights"].append(weights_row)
    return Dataset.from_dict(columns)


def padding_efficiency(lengths: Sequence[int], slots: int) -> float:
    """Fraction of ``slots`` (rows x padded length) that hold real tokens."""
    return sum(lengths) / slots if slots else 0.0


class PackedCollator:
    """Batch packed rows: pad each to the longest row (or ``pad_to_multiple_of``) and never emit an attention mask.

    Padding is given labels ``-100``, weight 0 and its own restarting ``position_ids``, so it forms a separate
    "sample" that no real token attends to. ``return_flash_attn_kwargs=True`` adds ``cu_seq_lens_q/k`` and
    ``max_length_q/k`` for flash-attention's varlen path (computed over the flattened batch, padding included).
    """

    def __init__(self, pad_token_id: int = 0, *, pad_to_multiple_of: int | None = None,
                 return_flash_attn_kwargs: bool = False):
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_flash_attn_kwargs = return_flash_attn_kwargs

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor | int]:
        width = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        weighted = "token_weights" in rows[0]
        batch: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
        if weighted:
            batch["token_weights"] = []
        seq_lengths: list[int] = []
        for r in rows:
            pad = width - len(r["input_ids"])
            batch["input_ids"].append(list(r["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(r["labels"]) + [-100] * pad)
            batch["position_ids"].append(list(r["position_ids"]) + list(range(pad)))
            if weighted:
                batch["token_weights"].append(list(r["token_weights"]) + [0.0] * pad)
            seq_lengths += list(r.get("seq_lengths") or [len(r["input_ids"])]) + ([pad] if pad else [])
        out: dict[str, torch.Tensor | int] = {k: torch.tensor(v) for k, v in batch.items()}
        if weighted:
            out["token_weights"] = out["token_weights"].float()
        if self.return_flash_attn_kwargs:
            cu = torch.tensor([0, *seq_lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(seq_lengths), max_length_k=max(seq_lengths))
        return out
