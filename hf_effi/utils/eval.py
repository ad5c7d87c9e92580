"""Held-out loss and perplexity of a causal language model: token-weighted mean next-token NLL, and its exp.

Every predicted token weighs the same, whatever the batch it falls in (a mean of per-batch means would not).
Position ``t`` of the logits predicts label ``t + 1`` (the usual shift); labels equal to ``-100`` are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE_INDEX", "mean_loss", "perplexity"]

IGNORE_INDEX = -100


def _check_counts(batch_size: Any, max_batches: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int; pass e.g. batch_size=8")
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches={max_batches!r} must be None (the whole dataset) or a positive int")


def _as_list(value: Any, key: str, index: int) -> list[int]:
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ValueError(f"row {index}: {key} must be 1-D (one sequence per row), got shape {tuple(value.shape)}")
        return value.tolist()
    return list(value)


def _batches(dataset: Iterable[Mapping[str, Any]], batch_size: int) -> Iterator[list[tuple[int, Mapping[str, Any]]]]:
    batch: list[tuple[int, Mapping[str, Any]]] = []
    for index, row in enumerate(dataset):
        if not isinstance(row, Mapping) or "input_ids" not in row:
            raise ValueError(
                f"row {index} of the dataset must be a mapping with 'input_ids' (optional 'labels', "
                f"'attention_mask'), got {type(row).__name__}"
                + (f" with keys {sorted(row)}" if isinstance(row, Mapping) else "")
            )
        batch.append((index, row))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _collate(batch: list[tuple[int, Mapping[str, Any]]], pad_id: int, device: torch.device):
    """Right-pads to the longest row. Returns input_ids, attention_mask, labels, each ``[B, T]`` int64."""
    rows = []
    for index, row in batch:
        ids = _as_list(row["input_ids"], "input_ids", index)
        mask = (
            _as_list(row["attention_mask"], "attention_mask", index)
            if row.get("attention_mask") is not None
            else [1] * len(ids)
        )
        if row.get("labels") is not None:
            labels = _as_list(row["labels"], "labels", index)
        else:
            labels = [tok if m else IGNORE_INDEX for tok, m in zip(ids, mask)]
        if not (len(ids) == len(mask) == len(labels)):
            raise ValueError(
                f"row {index}: input_ids, attention_mask and labels must have one length, got "
                f"{len(ids)}, {len(mask)}, {len(labels)}"
            )
        rows.append((ids, mask, labels))
    width = max(len(ids) for ids, _, _ in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    for i, (ids, mask, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(mask)] = torch.tensor(mask, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def _logits(output: Any) -> torch.Tensor:
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _nll_sum_and_count(
    model: nn.Module, dataset: Iterable[Mapping[str, Any]], batch_size: int, max_batches: int | None
) -> tuple[float, int]:
    _check_counts(batch_size, max_batches)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (a causal LM returning logits), got {type(model).__name__}")
    config = getattr(model, "config", None)
    pad_id = getattr(config, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    device = _model_device(model)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for n, batch in enumerate(_batches(dataset, batch_size)):
                if max_batches is not None and n >= max_batches:
                    break
                input_ids, attention_mask, labels = _collate(batch, pad_id, device)
                logits = _logits(model(input_ids=input_ids, attention_mask=attention_mask))  # [B, T, V]
                shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # [B*(T-1), V]
                shift_labels = labels[:, 1:].reshape(-1)  # [B*(T-1)]
                total += F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum").item()
                count += int((shift_labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(
            "the dataset has no predicted tokens (every row is shorter than 2 tokens or every shifted label is "
            "-100); pass rows with at least 2 unmasked tokens"
        )
    return total, count


def mean_loss(
    model: nn.Module, dataset: Iterable[Mapping[str, Any]], *, batch_size: int = 8, max_batches: int | None = None
) -> float:
    """Token-weighted mean next-token negative log-likelihood (nats) of ``model`` on ``dataset``.

    Args:
        model: a causal LM called as ``model(input_ids=[B, T], attention_mask=[B, T])`` returning logits
            ``[B, T, V]`` (or an output with ``.logits``). Its train/eval mode is restored afterwards.
        dataset: iterable of rows with ``input_ids`` (list or 1-D tensor), optional ``labels`` (same length,
            ``-100`` = ignore; default: ``input_ids`` where ``attention_mask`` is 1) and ``attention_mask``.
            Rows are right-padded per batch with ``config.pad_token_id`` (0 if unset).
        batch_size: rows per forward.
        max_batches: stop after this many batches (``None``: the whole dataset).
    """
    total, count = _nll_sum_and_count(model, dataset, batch_size, max_batches)
    return total / count


def perplexity(
    model: nn.Module, dataset: Iterable[Mapping[str, Any]], *, batch_size: int = 8, max_batches: int | None = None
) -> float:
    """``exp`` of :func:`mean_loss`: the perplexity over every predicted token of ``dataset``."""
    return math.exp(mean_loss(model, dataset, batch_size=batch_size, max_batches=max_batches))
