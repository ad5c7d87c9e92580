"""SLTrain: sparse plus low-rank weights for pretraining and fine-tuning (Han et al., NeurIPS 2024, arXiv 2406.02214)."""

from __future__ import annotations

from hf_effi.peft._register import register_tuner
from hf_effi.peft.sltrain.config import SLTrainConfig
from hf_effi.peft.sltrain.layer import SLTrainLayer, SLTrainLinear, random_support, sparse_plus_lowrank
from hf_effi.peft.sltrain.model import SLTrainModel
from hf_effi.peft.sltrain.pretrain import SparseLowRankLinear, densify_sltrain, sltrain_model

__all__ = ["SLTrainConfig", "SLTrainLayer", "SLTrainLinear", "SLTrainModel", "SparseLowRankLinear",
           "densify_sltrain", "random_support", "sltrain_model", "sparse_plus_lowrank"]

register_tuner(name="sltrain", config_cls=SLTrainConfig, model_cls=SLTrainModel, prefix="sltrain_")
