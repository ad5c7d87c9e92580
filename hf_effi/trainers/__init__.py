"""Trainer subclasses, arguments and callbacks: ``EffiTrainer`` builds hf_effi optimizers and schedules by name."""

from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.effi_trainer import EffiTrainer
from hf_effi.trainers.grad_norm_logger import GradNormLogger
from hf_effi.trainers.noise_scale import NoiseScaleCallback

__all__ = ["EffiTrainer", "EffiTrainingArguments", "GradNormLogger", "NoiseScaleCallback"]
