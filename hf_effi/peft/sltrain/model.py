"""SLTrain tuner (fine-tuning form): wraps the targeted ``nn.Linear`` modules in ``SLTrainLinear``."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from hf_effi.peft.sltrain.layer import SLTrainLayer, SLTrainLinear, support_seed
from hf_effi.peft.sora.checks import check_plain_linear, validate_targets

__all__ = ["SLTrainModel"]


class SLTrainModel(BaseTuner):
    """SLTrain (Han et al., NeurIPS 2024, arXiv 2406.02214) as a peft tuner: ``W0 + scaling * B A + S``.

    For pretraining from scratch (no ``W0`` at all) use ``hf_effi.peft.sltrain_model``.
    """

    prefix: str = "sltrain_"
    tuner_layer_cls = SLTrainLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _prepare_model(self, peft_config, model) -> None:
        def check(linear, key):
            if peft_config.r > min(linear.in_features, linear.out_features):
                raise ValueError(f"SLTrain: r={peft_config.r} exceeds min(in_features, out_features)="
                                 f"{min(linear.in_features, linear.out_features)} of {key!r} "
                                 f"({linear.out_features}x{linear.in_features}); pass a smaller r")

        validate_targets(self, peft_config, model, check, "SLTrain")

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        args = (config.r, config.lora_alpha, config.density, support_seed(config.init_seed, current_key),
                config.init_weights)
        if isinstance(target, SLTrainLayer):
            target.update_layer(adapter_name, *args, inference_mode=config.inference_mode)
            return
        check_plain_linear(target, current_key, "SLTrain")
        new_module = SLTrainLinear(target, adapter_name, *args, inference_mode=config.inference_mode)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
