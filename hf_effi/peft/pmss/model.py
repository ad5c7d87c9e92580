"""PMSS tuner: wraps the targeted ``nn.Linear`` layers in :class:`PMSSLinear`."""

from __future__ import annotations

from hf_effi.peft._base import DeltaTuner
from hf_effi.peft.pmss.layer import PMSSLayer, PMSSLinear

__all__ = ["PMSSModel"]


class PMSSModel(DeltaTuner):
    prefix: str = "pmss_"
    tuner_layer_cls = PMSSLayer
    linear_cls = PMSSLinear

    def check_target(self, key, linear, config) -> None:
        bound = min(linear.in_features, linear.out_features)
        if config.r > bound:
            raise ValueError(
                f"PMSS: r={config.r} exceeds min(in, out)={bound} of {key!r} ({linear.in_features}->{linear.out_features});"
                " choose a smaller r"
            )
