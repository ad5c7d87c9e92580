"""SoRA: sparse low-rank adaptation with a proximal-step gate (Ding et al., EMNLP 2023, arXiv 2311.11696)."""

from __future__ import annotations

from hf_effi.peft._register import register_tuner
from hf_effi.peft.sora.config import SoRAConfig
from hf_effi.peft.sora.export import export_lora, sora_to_lora_factors
from hf_effi.peft.sora.layer import SoRALayer, SoRALinear
from hf_effi.peft.sora.model import SoRAModel
from hf_effi.peft.sora.proximal import (
    SoRACallback,
    soft_threshold_,
    sora_gate_sparsity,
    sora_proximal_step,
    sora_threshold,
)

__all__ = ["SoRACallback", "SoRAConfig", "SoRALayer", "SoRALinear", "SoRAModel", "export_lora", "soft_threshold_",
           "sora_gate_sparsity", "sora_proximal_step", "sora_threshold", "sora_to_lora_factors"]

register_tuner(name="sora", config_cls=SoRAConfig, model_cls=SoRAModel, prefix="sora_")
