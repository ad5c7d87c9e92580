"""SLTrain tuner (fine-tuning form): wraps the targeted ``nn.Linear`` modules in ``SLTrainLinear``."""

from __future__ import annotations

from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from hf_effi.peft._base import DeltaTuner
from hf_effi.peft.sltrain.layer import SLTrainLayer, SLTrainLinear, support_seed

__all__ = ["SLTrainModel"]


class SLTrainModel(DeltaTuner):
    """SLTrain (Han et al., NeurIPS 2024, arXiv 2406.02214) as a peft tuner: ``W0 + scaling * B A + S``.

    For pretraining from scratch (no ``W0`` at all) use ``hf_effi.peft.sltrain_model``.
    """

    prefix: str = "sltrain_"
    tuner_layer_cls = SLTrainLayer
    linear_cls = SLTrainLinear
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def layer_args(self, config, key, linear) -> tuple:
        return config.r, config.lora_alpha, config.density, support_seed(config.init_seed, key), config.init_weights
