"""Trainer subclasses and arguments: ``EffiTrainer`` builds hf_effi optimizers and schedules by name."""

from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.effi_trainer import EffiTrainer

__all__ = ["EffiTrainer", "EffiTrainingArguments"]
