"""SoRA layers: LoRA whose rank-r bottleneck is scaled by a gate vector that a proximal step makes sparse.

Ding et al., "Sparse Low-rank Adaptation of Pre-trained Language Models", EMNLP 2023, arXiv 2311.11696, Eq. (3):
``h = W0 x + B (g * (A x))``, here scaled by ``lora_alpha / r`` as in the official code.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

__all__ = ["SoRALayer", "SoRALinear"]


class SoRALayer(BaseTunerLayer):
    """Adapter state keyed by adapter name: ``sora_A`` [r, in], ``sora_B`` [out, r], ``sora_gate`` [r]."""

    adapter_layer_names = ("sora_A", "sora_B", "sora_gate")
    other_param_names = ("sora_r", "sora_scaling")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.sora_A = nn.ParameterDict({})
        self.sora_B = nn.ParameterDict({})
        self.sora_gate = nn.ParameterDict({})
        self.sora_r: dict[str, int] = {}
        self.sora_scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features

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

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``scaling * B diag(g) A``, [out, in], in fp32 when the adapter is in a half dtype (then cast back)."""
        a, b, g = self.sora_A[adapter_name], self.sora_B[adapter_name], self.sora_gate[adapter_name]
        dtype = a.dtype
        compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        delta = (b.to(compute) * g.to(compute)) @ a.to(compute) * self.sora_scaling[adapter_name]
        return delta.to(dtype)


class SoRALinear(nn.Module, SoRALayer):
    """An ``nn.Linear`` with SoRA adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, r: int, lora_alpha: float, gate_init: str,
                 init_weights: bool, inference_mode: bool = False, **kwargs: Any) -> None:
        super().__init__()
        SoRALayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, gate_init, init_weights, inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in adapter_names:
            if name not in self.sora_A:
                continue
            delta = self.get_delta_weight(name).to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"SoRA: NaNs/infs in the merged weights; adapter {name!r} seems broken")
                base.weight.data = merged
            else:
                base.weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.sora_A:
                base.weight.data -= self.get_delta_weight(name).to(base.weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name not in self.sora_A:
                continue
            a, b, g = self.sora_A[name], self.sora_B[name], self.sora_gate[name]
            h = F.linear(self._cast_input_dtype(x, a.dtype), a) * g  # [..., r]
            result = result + (F.linear(h, b) * self.sora_scaling[name]).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "sora." + super().__repr__()
