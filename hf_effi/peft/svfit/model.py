"""SVFit tuner: wraps the targeted ``nn.Linear`` layers in :class:`SVFitLinear`."""

from __future__ import annotations

from hf_effi.peft._base import DeltaTuner
from hf_effi.peft.svfit.layer import SVFitLayer, SVFitLinear

__all__ = ["SVFitModel"]


class SVFitModel(DeltaTuner):
    prefix: str = "svfit_"
    tuner_layer_cls = SVFitLayer
    linear_cls = SVFitLinear

    def check_target(self, key, linear, config) -> None:
        bound = min(linear.in_features, linear.out_features)
        if config.r > bound:
            raise ValueError(
                f"SVFit: r={config.r} exceeds min(in, out)={bound} of {key!r} ({linear.in_features}->{linear.out_features});"
                " choose a smaller r"
            )
