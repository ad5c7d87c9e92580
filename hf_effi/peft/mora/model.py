"""MoRA tuner: wraps the targeted ``nn.Linear`` layers in :class:`MoRALinear`."""

from __future__ import annotations

from hf_effi.peft._base import DeltaTuner
from hf_effi.peft.mora.layer import MoRALayer, MoRALinear, mora_rank

__all__ = ["MoRAModel"]


class MoRAModel(DeltaTuner):
    prefix: str = "mora_"
    tuner_layer_cls = MoRALayer
    linear_cls = MoRALinear

    def check_target(self, key, linear, config) -> None:
        r_hat = mora_rank(linear.in_features, linear.out_features, config.r, config.mora_type)
        bound = min(linear.in_features, linear.out_features)
        if not 2 <= r_hat <= bound:
            raise ValueError(
                f"MoRA: r={config.r} gives r_hat={r_hat} for {key!r} ({linear.in_features}->{linear.out_features}), "
                f"outside [2, min(in, out)={bound}]; choose a smaller r"
            )
