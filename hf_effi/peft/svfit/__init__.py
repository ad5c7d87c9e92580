"""SVFit: train the top-r singular values of the pretrained weight (arXiv 2409.05926); registered on import."""

from __future__ import annotations

from hf_effi.peft._register import register_tuner
from hf_effi.peft.svfit.config import SVFitConfig
from hf_effi.peft.svfit.layer import SVFitLayer, SVFitLinear, top_singular
from hf_effi.peft.svfit.model import SVFitModel

__all__ = ["SVFitConfig", "SVFitLayer", "SVFitLinear", "SVFitModel", "top_singular"]

register_tuner(name="svfit", config_cls=SVFitConfig, model_cls=SVFitModel, prefix="svfit_")
