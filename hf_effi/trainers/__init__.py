"""Trainer subclasses, arguments and callbacks.

``EffiTrainer`` builds hf_effi optimizers and schedules by name; the technique trainers change what trains
(``LISATrainer``, ``HFTTrainer``, ``ZOTrainer``), which samples train (``InfoBatchTrainer``) or the objective
(``AttentionTransferTrainer`` for linearized models); the callbacks log training signals.
"""

from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.attention_transfer import AttentionTransferArguments, AttentionTransferTrainer
from hf_effi.trainers.effi_trainer import EffiTrainer
from hf_effi.trainers.grad_norm_logger import GradNormLogger
from hf_effi.trainers.gsnr import GSNRCallback
from hf_effi.trainers.hft import HFTArguments, HFTTrainer
from hf_effi.trainers.infobatch import InfoBatchArguments, InfoBatchTrainer
from hf_effi.trainers.infobatch_sampler import InfoBatchSampler
from hf_effi.trainers.layer_selection import LayerSelectionTrainer
from hf_effi.trainers.lisa import LISAArguments, LISATrainer
from hf_effi.trainers.noise_scale import NoiseScaleCallback
from hf_effi.trainers.spectrum import spectrum_freeze, spectrum_scan
from hf_effi.trainers.zo import ZOArguments, ZOTrainer
from hf_effi.trainers.zo_perturb import ZOOptimizer

__all__ = [
    "AttentionTransferArguments",
    "AttentionTransferTrainer",
    "EffiTrainer",
    "EffiTrainingArguments",
    "GSNRCallback",
    "GradNormLogger",
    "HFTArguments",
    "HFTTrainer",
    "InfoBatchArguments",
    "InfoBatchSampler",
    "InfoBatchTrainer",
    "LISAArguments",
    "LISATrainer",
    "LayerSelectionTrainer",
    "NoiseScaleCallback",
    "ZOArguments",
    "ZOOptimizer",
    "ZOTrainer",
    "spectrum_freeze",
    "spectrum_scan",
]
