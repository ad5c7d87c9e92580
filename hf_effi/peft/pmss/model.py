"""PMSS tuner: wraps the targeted ``nn.Linear`` layers in :class:`PMSSLinear`."""

from __future__ import annotations

from hf_effi.peft._base import DeltaTuner
from hf_effi.peft.pmss.layer import PMSSLayer, PMSSLinear

__all__ = ["PMSSModel"]


class PMSSModel(DeltaTuner):
    prefix: str = "pmss_"
    tuner_layer_cls = PMSSLayer
    linear_cls = PMSSLinear
