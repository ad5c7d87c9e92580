"""S²FT: structured sparse fine-tuning of selected heads and channels (Yang et al., NeurIPS 2024, arXiv 2412.06289)."""

from __future__ import annotations

from hf_effi.peft._register import register_tuner
from hf_effi.peft.s2ft.config import S2FTConfig
from hf_effi.peft.s2ft.layer import S2FTLayer, S2FTLinear, select_units
from hf_effi.peft.s2ft.model import S2FTModel

__all__ = ["S2FTConfig", "S2FTLayer", "S2FTLinear", "S2FTModel", "select_units"]

register_tuner(name="s2ft", config_cls=S2FTConfig, model_cls=S2FTModel, prefix="s2ft_")
