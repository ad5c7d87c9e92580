"""S²FT tuner: wraps the targeted ``nn.Linear`` modules in ``S2FTLinear`` with randomly selected heads/channels."""

from __future__ import annotations

import torch
from torch import nn

from hf_effi.peft._base import DeltaTuner
from hf_effi.peft.s2ft.layer import S2FTLayer, S2FTLinear, select_units

__all__ = ["S2FTModel"]

_DEFAULT_TARGETS = {arch: ["o_proj", "down_proj"] for arch in
                    ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "smollm3")}
_DEFAULT_TARGETS["gpt_neox"] = ["dense", "dense_4h_to_h"]


class S2FTModel(DeltaTuner):
    """S²FT (Yang et al., NeurIPS 2024, arXiv 2412.06289) as a peft tuner; see ``S2FTConfig`` for the selection."""

    prefix: str = "s2ft_"
    tuner_layer_cls = S2FTLayer
    linear_cls = S2FTLinear
    target_module_mapping = _DEFAULT_TARGETS

    def _head_dim(self, config) -> int:
        if config.head_dim is not None:
            return config.head_dim
        model_config = getattr(self.model, "config", None)
        head_dim = getattr(model_config, "head_dim", None)
        if head_dim is None and getattr(model_config, "num_attention_heads", None):
            head_dim = model_config.hidden_size // model_config.num_attention_heads
        if not head_dim:
            raise ValueError("S2FT: cannot infer head_dim from the model config; pass S2FTConfig(head_dim=...)")
        return int(head_dim)

    def _selection(self, config, linear: nn.Linear, key: str) -> tuple[torch.Tensor, bool]:
        short = key.rsplit(".", 1)[-1]
        rows = short in config.row_modules
        attention = short in config.attention_modules
        unit = self._head_dim(config) if attention else 1
        dim = linear.out_features if rows else linear.in_features
        if dim % unit:
            raise ValueError(f"S2FT: {key!r} has {dim} {'rows' if rows else 'columns'}, not a multiple of "
                             f"head_dim={unit}; pass S2FTConfig(head_dim=...) or list it outside attention_modules")
        ratio = config.head_ratio if attention else config.channel_ratio
        return select_units(dim // unit, ratio, unit, f"{config.selection_seed}:{key}"), rows

    def check_target(self, key, linear, config) -> None:
        self._selection(config, linear, key)

    def layer_args(self, config, key, linear) -> tuple:
        return (*self._selection(config, linear, key), config.init_weights)
