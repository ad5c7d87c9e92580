"""SLTrain layers: a fixed-support sparse matrix plus a low-rank product, added to (or replacing) a Linear weight.

Han et al., arXiv 2406.02214, Eq. (3): ``W = B A + S`` with ``S`` supported on a random fixed set of
``density * d_out * d_in`` positions, of which only the values are learned. ``S`` is stored as flat indices
(int32 when the weight has fewer than 2**31 entries) plus values, 8 bytes per non-zero in fp32. The forward
materialises the dense ``scaling * B A + S`` (one [out, in] temporary per layer, as the official kernel does) and
multiplies once, so the backward gives S's gradient at the support only.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from torch import nn

from hf_effi.peft._base import DeltaLayer, DeltaLinear

__all__ = ["SLTrainLayer", "SLTrainLinear", "random_support", "sparse_plus_lowrank", "support_seed"]


def support_seed(init_seed: int, module_name: str) -> int:
    """The generator seed of one layer's support: stable across runs and processes, distinct across layers."""
    return zlib.crc32(f"{init_seed}:{module_name}".encode())


def random_support(out_features: int, in_features: int, density: float, seed: int) -> torch.Tensor:
    """Sorted flat indices of ``int(density * out * in)`` (at least 1) distinct positions of an [out, in] matrix,
    uniform without replacement; int32 when possible."""
    total = out_features * in_features
    nnz = max(1, int(density * total))
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:nnz].sort().values
    return idx.to(torch.int32 if total < 2**31 else torch.int64)


def sparse_plus_lowrank(a: torch.Tensor, b: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                        scaling: float) -> torch.Tensor:
    """``scaling * B A + S``, [out, in], differentiable in A [r, in], B [out, r] and the values [nnz] of S."""
    low = (b @ a) * scaling
    return torch.index_add(low.flatten(), 0, indices, values.to(low.dtype)).view_as(low)


class SLTrainLayer(DeltaLayer):
    """Adapter state keyed by adapter name: ``sltrain_A`` [r, in], ``sltrain_B`` [out, r], ``sltrain_values`` [nnz]
    (trained) and the ``sltrain_indices`` buffer [nnz] (saved with the adapter)."""

    adapter_layer_names = ("sltrain_A", "sltrain_B", "sltrain_values")
    other_param_names = ("sltrain_indices", "sltrain_r", "sltrain_scaling")
    method_name = "SLTrain"

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.sltrain_A = nn.ParameterDict({})
        self.sltrain_B = nn.ParameterDict({})
        self.sltrain_values = nn.ParameterDict({})
        self.sltrain_indices = BufferDict({}, persistent=True)
        self.sltrain_r: dict[str, int] = {}
        self.sltrain_scaling: dict[str, float] = {}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, density: float, seed: int,
                     init_weights: bool, inference_mode: bool = False) -> None:
        if r > min(self.in_features, self.out_features):
            raise ValueError(f"SLTrain: r={r} exceeds min(in_features, out_features)="
                             f"{min(self.in_features, self.out_features)}; pass a smaller r")
        indices = random_support(self.out_features, self.in_features, density, seed)
        self.sltrain_r[adapter_name] = r
        self.sltrain_scaling[adapter_name] = lora_alpha / r
        a = torch.empty(r, self.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        if init_weights:  # fine-tuning starts at the base model
            b, values = torch.zeros(self.out_features, r), torch.zeros(indices.numel())
        else:
            bound = 1 / math.sqrt(self.in_features)
            b = torch.randn(self.out_features, r) * 0.1
            values = torch.empty(indices.numel()).uniform_(-bound, bound)
        self.sltrain_A[adapter_name] = nn.Parameter(a)
        self.sltrain_B[adapter_name] = nn.Parameter(b)
        self.sltrain_values[adapter_name] = nn.Parameter(values)
        self.sltrain_indices[adapter_name] = indices
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def adapter_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``x (scaling * B A + S)^T`` through one dense [out, in] temporary, in the adapter's dtype."""
        a = self.sltrain_A[adapter_name]
        delta = sparse_plus_lowrank(a, self.sltrain_B[adapter_name], self.sltrain_values[adapter_name],
                                    self.sltrain_indices[adapter_name], self.sltrain_scaling[adapter_name])
        return F.linear(self._cast_input_dtype(x, a.dtype), delta)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``scaling * B A + S`` [out, in], computed in fp32 for half-precision adapters and cast back."""
        a = self.sltrain_A[adapter_name]
        compute = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
        delta = sparse_plus_lowrank(a.to(compute), self.sltrain_B[adapter_name].to(compute),
                                    self.sltrain_values[adapter_name].to(compute),
                                    self.sltrain_indices[adapter_name], self.sltrain_scaling[adapter_name])
        return delta.to(a.dtype)


class SLTrainLinear(DeltaLinear, SLTrainLayer):
    """An ``nn.Linear`` with SLTrain adapters (fine-tuning form ``W0 + scaling * B A + S``)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, r: int, lora_alpha: float, density: float, seed: int,
                 init_weights: bool, inference_mode: bool = False, **kwargs: Any) -> None:
        super().__init__()
        SLTrainLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, density, seed, init_weights, inference_mode)
