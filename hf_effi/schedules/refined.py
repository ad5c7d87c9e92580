"""Refined schedules: the last-iterate-optimal lr schedule for the gradient norms observed in a previous run.

Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much? Adaptive Learning Rate Scheduling by Refinement"
(arXiv 2310.07831). From one run's per-step gradient norms ``g_t`` (l2 for SGD, l1 for Adam-type optimizers):

1. smooth ``g`` with a median filter of width ``2 * (int(filter_width * n) // 2) + 1`` (``n`` logged steps, 10% by
   default), reflecting at both ends, and resample it linearly to the new run's length;
2. weights ``w_t = g_t ** -2`` (SGD, l2 norms) or ``w_t = g_t ** -1`` (Adam, l1 norms);
3. ``eta_t = w_t * sum_{p > t} w_p``, normalised to a maximum of 1 (Alg. 1 / Eq. (5) of the paper's refinement).

Where the paper leaves room, our choices: the steps are ``t = 0 .. T`` (``T + 1`` points), so the multiplier reaches
0 at step ``T``, after the last update, like every hf_effi profile, and constant norms give exactly the ``linear``
profile ``1 - t / T`` (tested); the median filter reflects at both ends (the reference code reflects at the tail).
Decreasing norms put a warmup at the start and growing norms near the end a sharp final anneal, both automatically.

Use: log the norms with :class:`hf_effi.trainers.grad_norm_logger.GradNormLogger` in a first run, then
``schedule="refined", schedule_kwargs=refine(logger)`` (or ``effi_schedule_args=refine("norms.jsonl")``).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["NORM_TYPES", "build_refined", "median_filter", "refine", "refined", "refined_multipliers"]

NORM_TYPES = ("l1", "l2")
_LOG_KEYS = {"l1": ("grad_norm_l1",), "l2": ("grad_norm_l2", "grad_norm")}


def median_filter(values: np.ndarray, width: int) -> np.ndarray:
    """Running median over an odd ``width``, the ends padded by reflection; shape kept."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width={width} must be a positive odd int")
    half = width // 2
    if half == 0 or len(values) == 1:
        return values.astype(np.float64).copy()
    padded = np.pad(values.astype(np.float64), half, mode="reflect" if len(values) > half else "edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1)


def _check_norms(grad_norms) -> np.ndarray:
    if isinstance(grad_norms, (str, bytes)) or not isinstance(grad_norms, Iterable):
        raise TypeError(f"grad_norms must be a list of positive numbers, got {type(grad_norms).__name__}")
    g = np.asarray(list(grad_norms), dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError("grad_norms is empty; log at least one step with GradNormLogger")
    bad = np.flatnonzero(~np.isfinite(g) | (g <= 0))
    if bad.size:
        raise ValueError(
            f"grad_norms[{bad[0]}]={g[bad[0]]} is not a positive finite number ({bad.size} such entries); refined "
            "weights are 1/g or 1/g^2, so drop steps whose gradient was zero, NaN or inf"
        )
    return g


def refined_multipliers(
    grad_norms: Iterable[float], num_training_steps: int, *, norm: str = "l1", filter_width: float = 0.1
) -> list[float]:
    """The refined multipliers for steps ``0 .. num_training_steps`` (``T + 1`` values, max 1, last 0).

    Args:
        grad_norms: one gradient norm per step of a previous run (any length; resampled to the new run).
        num_training_steps: optimizer steps of the new run.
        norm: ``"l1"`` (Adam-type optimizers; ``w = 1/g``) or ``"l2"`` (SGD; ``w = 1/g^2``).
        filter_width: median-filter width as a fraction of the logged steps.
    """
    g = _check_norms(grad_norms)
    if norm not in NORM_TYPES:
        raise ValueError(f"norm={norm!r} is not one of {', '.join(NORM_TYPES)} (l1 for Adam-type, l2 for SGD)")
    if isinstance(filter_width, bool) or not isinstance(filter_width, (int, float)) or not 0 <= filter_width <= 1:
        raise ValueError(f"filter_width={filter_width!r} is a fraction of the logged steps and must be in [0, 1]")
    width = 2 * (int(filter_width * g.size) // 2) + 1
    smooth = median_filter(g, width)
    # Resample to T + 1 points of the new run (positions in [0, 1] of both logs).
    positions = np.linspace(0.0, 1.0, num_training_steps + 1)
    resampled = (
        np.interp(positions, np.linspace(0.0, 1.0, g.size), smooth)
        if g.size > 1
        else np.full_like(positions, smooth[0])
    )
    weights = resampled**-2 if norm == "l2" else resampled**-1
    # eta_t = w_t * sum_{p > t} w_p: a reversed cumulative sum, shifted by one.
    tail = np.concatenate([np.cumsum(weights[::-1])[::-1][1:], [0.0]])
    eta = weights * tail
    return [float(x) for x in eta / eta.max()] if eta.max() > 0 else [0.0] * eta.size


def refined(step: int, *, multipliers: tuple[float, ...]) -> float:
    """The precomputed multiplier at ``step``; steps past the end stay at the last value (0)."""
    return multipliers[min(max(step, 0), len(multipliers) - 1)]


def build_refined(
    *,
    num_training_steps: int,
    num_warmup_steps: int,
    grad_norms: list[float] | None = None,
    norm: str = "l1",
    filter_width: float = 0.1,
):
    if grad_norms is None:
        raise ValueError(
            "schedule 'refined' needs grad_norms from a previous run: log them with "
            "hf_effi.trainers.grad_norm_logger.GradNormLogger and pass schedule_kwargs=hf_effi.schedules.refine(log)"
        )
    if num_warmup_steps:
        raise ValueError(
            f"schedule 'refined' got warmup={num_warmup_steps} steps, but it makes its own warmup from the gradient "
            "norms; pass warmup=0 (warmup_steps=0 with EffiTrainer)"
        )
    multipliers = tuple(refined_multipliers(grad_norms, num_training_steps, norm=norm, filter_width=filter_width))
    settings = dict(
        num_training_steps=num_training_steps,
        grad_norms=[float(x) for x in grad_norms],
        norm=norm,
        filter_width=float(filter_width),
    )
    return functools.partial(refined, multipliers=multipliers), settings


def _records(log) -> list:
    """Rows from a GradNormLogger, a JSONL file, a trainer_state.json, a list of dicts or a list of numbers."""
    if hasattr(log, "records"):
        return list(log.records)
    if isinstance(log, (str, Path)):
        path = Path(log)
        if not path.is_file():
            raise ValueError(f"log={str(log)!r} is not a file; pass a GradNormLogger JSONL or a trainer_state.json")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
            return list(data.get("log_history", [])) if isinstance(data, dict) else list(data)
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"log={str(log)!r} is not JSON lines ({err.msg} at line {err.lineno})") from None
    if isinstance(log, Iterable):
        return list(log)
    raise TypeError(
        f"log must be a GradNormLogger, a path to its JSONL (or a trainer_state.json), or a list, got "
        f"{type(log).__name__}"
    )


def refine(log, *, norm: str = "l1", filter_width: float = 0.1) -> dict:
    """The ``schedule_kwargs`` of a ``refined`` schedule for the next run, from a previous run's gradient norms.

    Args:
        log: a :class:`~hf_effi.trainers.grad_norm_logger.GradNormLogger`, the JSONL it saved, a list of its rows
            (dicts with ``grad_norm_l1`` / ``grad_norm_l2``), a Trainer ``trainer_state.json`` / ``log_history``
            (its ``grad_norm`` is the pre-clip l2 norm, so only ``norm="l2"`` and only with ``logging_steps=1``),
            or a plain list of norms.
        norm: ``"l1"`` for Adam-type optimizers (default), ``"l2"`` for SGD.
        filter_width: median-filter width as a fraction of the logged steps (paper: 0.1).

    Returns:
        ``{"grad_norms": [...], "norm": norm, "filter_width": filter_width}``, for ``make(..., schedule="refined",
        schedule_kwargs=...)`` or ``EffiTrainingArguments(effi_schedule="refined", effi_schedule_args=...)``.
    """
    if norm not in NORM_TYPES:
        raise ValueError(f"norm={norm!r} is not one of {', '.join(NORM_TYPES)} (l1 for Adam-type, l2 for SGD)")
    rows = _records(log)
    if rows and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rows):
        norms = [float(r) for r in rows]
    else:
        keys = _LOG_KEYS[norm]
        norms = []
        for row in rows:
            if isinstance(row, Mapping):
                found = next((row[k] for k in keys if k in row and row[k] is not None), None)
                if found is not None:
                    norms.append(float(found))
        if not norms:
            hint = " (a Trainer log has only the l2 'grad_norm'; use norm='l2' or log with GradNormLogger)"
            raise ValueError(f"log has no {' or '.join(keys)} entries for norm={norm!r}{hint if norm == 'l1' else ''}")
    _check_norms(norms)
    if not math.isfinite(filter_width):
        raise ValueError(f"filter_width={filter_width} must be finite")
    return {"grad_norms": norms, "norm": norm, "filter_width": float(filter_width)}
