"""PMSS: pretrained matrices skeleton selection (arXiv 2409.16722); registered into peft on import."""

from __future__ import annotations

from hf_effi.peft._register import register_tuner
from hf_effi.peft.pmss.config import PMSSConfig
from hf_effi.peft.pmss.layer import PMSSLayer, PMSSLinear, select_skeleton
from hf_effi.peft.pmss.model import PMSSModel

__all__ = ["PMSSConfig", "PMSSLayer", "PMSSLinear", "PMSSModel", "select_skeleton"]

register_tuner(name="pmss", config_cls=PMSSConfig, model_cls=PMSSModel, prefix="pmss_")
