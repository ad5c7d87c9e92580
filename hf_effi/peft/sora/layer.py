"""SoRA layers: LoRA whose rank-r bottleneck is scaled by a gate vector that a proximal step makes sparse.

Ding et al., "Sparse Low-rank Adaptation of Pre-trained Language Models", EMNLP 2023, arXiv 2311.11696, Eq. (3):
``h = W0 x + B (g * (A x))``, here scaled by ``lora_alpha / r`` as in the official code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_effi.peft._base import DeltaLayer, DeltaLinear

__all__ = ["SoRALayer", "SoRALinear"]


class SoRALayer(DeltaLayer):
    """Adapter state keyed by adapter name: ``sora_A`` [r, in], ``sora_B`` [out, r], ``sora_gate`` [r]."""

    adapter_layer_names = ("sora_A", "sora_B", "sora_gate")
    other_param_names = ("sora_r", "sora_scaling")
    method_name = "SoRA"

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.sora_A = nn.ParameterDict({})
        self.sora_B = nn.ParameterDict({})
        self.sora_gate = nn.ParameterDict({})
        self.sora_r: dict[str, int] = {}
        self.sora_scaling: dict[str, float] = {}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, gate_init: str, init_weights: bool,
                     inference_mode: bool = False) -> None:
        if r > min(self.in_features, self.out_features):
            raise ValueError(f"SoRA: r={r} exceeds min(in_features, out_features)="
                             f"{min(self.in_features, self.out_features)} of a {self.out_features}x{self.in_features} "
                             f"layer; pass a smaller r")
        self.sora_r[adapter_name] = r
        self.sora_scaling[adapter_name] = lora_alpha / r
        a = torch.empty(r, self.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as LoRA: A random, B zero, so the update starts at 0
        b = torch.zeros(self.out_features, r) if init_weights else torch.randn(self.out_features, r) * 0.1
        gate = torch.randn(r) if gate_init == "normal" else torch.ones(r)
        self.sora_A[adapter_name] = nn.Parameter(a)
        self.sora_B[adapter_name] = nn.Parameter(b)
        self.sora_gate[adapter_name] = nn.Parameter(gate)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def adapter_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``scaling * B (g * (A x))``, computed in the adapter's dtype."""
        a, b, g = self.sora_A[adapter_name], self.sora_B[adapter_name], self.sora_gate[adapter_name]
        h = F.linear(self._cast_input_dtype(x, a.dtype), a) * g  # [..., r]
        return F.linear(h, b) * self.sora_scaling[adapter_name]

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``scaling * B diag(g) A``, [out, in], in fp32 when the adapter is in a half dtype (then cast back)."""
        a, b, g = self.sora_A[adapter_name], self.sora_B[adapter_name], self.sora_gate[adapter_name]
        dtype = a.dtype
        compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        delta = (b.to(compute) * g.to(compute)) @ a.to(compute) * self.sora_scaling[adapter_name]
        return delta.to(dtype)


class SoRALinear(DeltaLinear, SoRALayer):
    """An ``nn.Linear`` with SoRA adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, r: int, lora_alpha: float, gate_init: str,
                 init_weights: bool, inference_mode: bool = False, **kwargs: Any) -> None:
        super().__init__()
        SoRALayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, gate_init, init_weights, inference_mode)
