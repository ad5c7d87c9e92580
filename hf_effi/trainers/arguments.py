"""``EffiTrainingArguments``: TrainingArguments plus the hf_effi optimizer and schedule, by name.

Technique-specific arguments subclass it (``LISAArguments(EffiTrainingArguments)``, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

__all__ = ["EffiTrainingArguments"]


def _as_dict(value: dict | str | None, name: str) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} must be a dict or a JSON object string, got {value!r} ({e.msg})") from None
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"{name} must be a dict or a JSON object string, got {value!r}")


@dataclass
class EffiTrainingArguments(TrainingArguments):
    """TrainingArguments with hf_effi's optimizer and schedule.

    Args:
        effi_optim: an hf_effi optimizer name (``hf_effi.available()["optimizers"]``); ``None`` keeps
            transformers' ``optim``.
        effi_optim_args: that optimizer's arguments, a dict or a JSON string (e.g. ``'{"betas": [0.9, 0.95]}'``).
            ``learning_rate`` and ``weight_decay`` come from the usual TrainingArguments fields.
        effi_schedule: an hf_effi schedule name (``hf_effi.available()["schedules"]``); ``None`` keeps
            transformers' ``lr_scheduler_type``. Warmup comes from ``warmup_steps``.
        effi_schedule_args: that schedule's arguments, a dict or a JSON string (e.g. ``'{"decay_type": "exponential"}'``).
        effi_linear_cross_entropy: compute the training loss without materialising the ``[tokens, vocab]`` logits
            (:func:`hf_effi.losses.patch_linear_cross_entropy`); eval keeps the model's own loss.
        effi_loss_chunk_size: tokens per chunk of that loss (extra memory about ``chunk * vocab * 4`` bytes).
    """

    effi_optim: str | None = field(
        default=None, metadata={"help": "hf_effi optimizer name (see `hf-effi available`); None keeps `optim`."}
    )
    effi_optim_args: dict | str | None = field(
        default=None, metadata={"help": "Arguments of effi_optim: a dict or a JSON object string."}
    )
    effi_schedule: str | None = field(
        default=None,
        metadata={"help": "hf_effi schedule name (see `hf-effi available`); None keeps `lr_scheduler_type`."},
    )
    effi_schedule_args: dict | str | None = field(
        default=None, metadata={"help": "Arguments of effi_schedule: a dict or a JSON object string."}
    )

    effi_linear_cross_entropy: bool = field(
        default=False,
        metadata={"help": "Memory-light training loss: never materialise the [tokens, vocab] logits."},
    )
    effi_loss_chunk_size: int = field(
        default=1024, metadata={"help": "Tokens per chunk of the memory-light loss (effi_linear_cross_entropy)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.effi_loss_chunk_size, int) or self.effi_loss_chunk_size < 1:
            raise ValueError(f"effi_loss_chunk_size must be a positive int, got {self.effi_loss_chunk_size!r}")
        from hf_effi.optim import OPTIMIZERS
        from hf_effi.schedules import SCHEDULES

        self.effi_optim_args = _as_dict(self.effi_optim_args, "effi_optim_args")
        self.effi_schedule_args = _as_dict(self.effi_schedule_args, "effi_schedule_args")
        # Fail at construction, not after the model is loaded and wrapped.
        if self.effi_optim is not None:
            self.effi_optim = OPTIMIZERS.get(self.effi_optim).name
        elif self.effi_optim_args:
            raise ValueError("effi_optim_args is set but effi_optim is not: name the hf_effi optimizer they are for")
        if self.effi_schedule is not None:
            self.effi_schedule = SCHEDULES.get(self.effi_schedule).name
        elif self.effi_schedule_args:
            raise ValueError("effi_schedule_args is set but effi_schedule is not: name the hf_effi schedule")
