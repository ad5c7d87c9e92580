"""MoRA: high-rank updating with a square matrix (arXiv 2405.12130); registered into peft on import."""

from __future__ import annotations

from hf_effi.peft._register import register_tuner
from hf_effi.peft.mora.config import MoRAConfig
from hf_effi.peft.mora.layer import MoRALayer, MoRALinear, mora_compress, mora_decompress, mora_rank
from hf_effi.peft.mora.model import MoRAModel

__all__ = ["MoRAConfig", "MoRALayer", "MoRALinear", "MoRAModel", "mora_compress", "mora_decompress", "mora_rank"]

register_tuner(name="mora", config_cls=MoRAConfig, model_cls=MoRAModel, prefix="mora_")
