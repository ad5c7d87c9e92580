"""SoRA tuner: wraps the targeted ``nn.Linear`` modules in ``SoRALinear``."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from hf_effi.peft.sora.checks import check_plain_linear, validate_targets
from hf_effi.peft.sora.layer import SoRALayer, SoRALinear

__all__ = ["SoRAModel"]


class SoRAModel(BaseTuner):
    """Sparse Low-rank Adaptation (Ding et al., EMNLP 2023, arXiv 2311.11696) as a peft tuner.

    Created by ``peft.get_peft_model(model, SoRAConfig(...))`` after ``import hf_effi``. Default targets are
    LoRA's (q_proj, v_proj for Llama-style models).
    """

    prefix: str = "sora_"
    tuner_layer_cls = SoRALayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _prepare_model(self, peft_config, model) -> None:
        def check(linear, key):
            if peft_config.r > min(linear.in_features, linear.out_features):
                raise ValueError(f"SoRA: r={peft_config.r} exceeds min(in_features, out_features)="
                                 f"{min(linear.in_features, linear.out_features)} of {key!r} "
                                 f"({linear.out_features}x{linear.in_features}); pass a smaller r")

        validate_targets(self, peft_config, model, check, "SoRA")

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        args = (config.r, config.lora_alpha, config.gate_init, config.init_weights)
        if isinstance(target, SoRALayer):
            target.update_layer(adapter_name, *args, inference_mode=config.inference_mode)
            return
        check_plain_linear(target, current_key, "SoRA")
        new_module = SoRALinear(target, adapter_name, *args, inference_mode=config.inference_mode)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter is not trainable
        self._replace_module(parent, target_name, new_module, target)
