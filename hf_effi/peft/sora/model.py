"""SoRA tuner: wraps the targeted ``nn.Linear`` modules in ``SoRALinear``."""

from __future__ import annotations

from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from hf_effi.peft._base import DeltaTuner
from hf_effi.peft.sora.layer import SoRALayer, SoRALinear

__all__ = ["SoRAModel"]


class SoRAModel(DeltaTuner):
    """Sparse Low-rank Adaptation (Ding et al., EMNLP 2023, arXiv 2311.11696) as a peft tuner.

    Created by ``peft.get_peft_model(model, SoRAConfig(...))`` after ``import hf_effi``. Default targets are
    LoRA's (q_proj, v_proj for Llama-style models).
    """

    prefix: str = "sora_"
    tuner_layer_cls = SoRALayer
    linear_cls = SoRALinear
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def layer_args(self, config, key, linear) -> tuple:
        return config.r, config.lora_alpha, config.gate_init, config.init_weights
