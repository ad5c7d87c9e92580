"""SVFit tuner: wraps the targeted ``nn.Linear`` layers in :class:`SVFitLinear`."""

from __future__ import annotations

from hf_effi.peft._base import DeltaTuner
from hf_effi.peft.svfit.layer import SVFitLayer, SVFitLinear

__all__ = ["SVFitModel"]


class SVFitModel(DeltaTuner):
    prefix: str = "svfit_"
    tuner_layer_cls = SVFitLayer
    linear_cls = SVFitLinear
