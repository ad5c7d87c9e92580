"""S²FT layers: a trainable dense slice (selected rows or columns) added to a frozen Linear weight.

Yang et al., arXiv 2412.06289, Sec. 3 ("select sparsely, compute densely"): the selected heads/channels are trained
as one dense sub-matrix. Columns (o_proj, down_proj): ``y = W0 x + D x[idx]`` with D [out, k]. Rows (v_proj,
up_proj): ``y = W0 x``, then ``y[idx] += D x`` with D [k, in]. Both compute only the k selected rows/columns, so the
adapter's cost is that of a k-wide matmul; no permutation of the base weights is needed in this adapter form.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from torch import nn

from hf_effi.peft._base import DeltaLayer, DeltaLinear

__all__ = ["S2FTLayer", "S2FTLinear", "select_units"]


def select_units(n_units: int, ratio: float, unit: int, seed_key: str) -> torch.Tensor:
    """Row/column indices (int64, sorted) of ``max(1, round(ratio * n_units))`` random units of ``unit`` consecutive
    rows/columns each, drawn from a generator seeded by ``crc32(seed_key)``."""
    k = min(n_units, max(1, round(ratio * n_units)))
    gen = torch.Generator().manual_seed(zlib.crc32(seed_key.encode()))
    units = torch.randperm(n_units, generator=gen)[:k].sort().values
    return (units[:, None] * unit + torch.arange(unit)).flatten()


class S2FTLayer(DeltaLayer):
    """Adapter state keyed by adapter name: ``s2ft_delta`` (trained) and the ``s2ft_indices`` buffer (saved)."""

    adapter_layer_names = ("s2ft_delta",)
    other_param_names = ("s2ft_indices", "s2ft_rows")
    method_name = "S2FT"

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.s2ft_delta = nn.ParameterDict({})
        self.s2ft_indices = BufferDict({}, persistent=True)
        self.s2ft_rows: dict[str, bool] = {}

    def update_layer(self, adapter_name: str, indices: torch.Tensor, rows: bool, init_weights: bool,
                     inference_mode: bool = False) -> None:
        limit = self.out_features if rows else self.in_features
        if indices.numel() == 0 or int(indices.max()) >= limit:
            raise ValueError(f"S2FT: selected {'rows' if rows else 'columns'} must be in [0, {limit}); got "
                             f"{indices.numel()} indices up to {int(indices.max()) if indices.numel() else None}")
        shape = (indices.numel(), self.in_features) if rows else (self.out_features, indices.numel())
        delta = torch.zeros(shape) if init_weights else torch.randn(shape) * 0.02
        self.s2ft_delta[adapter_name] = nn.Parameter(delta)
        self.s2ft_indices[adapter_name] = indices.to(torch.int64)
        self.s2ft_rows[adapter_name] = rows
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense [out, in] update: zero except the selected rows or columns."""
        d = self.s2ft_delta[adapter_name]
        idx = self.s2ft_indices[adapter_name]
        full = torch.zeros(self.out_features, self.in_features, dtype=d.dtype, device=d.device)
        if self.s2ft_rows[adapter_name]:
            full[idx] = d
        else:
            full[:, idx] = d
        return full


class S2FTLinear(DeltaLinear, S2FTLayer):
    """An ``nn.Linear`` with S²FT adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, indices: torch.Tensor, rows: bool,
                 init_weights: bool, inference_mode: bool = False, **kwargs: Any) -> None:
        super().__init__()
        S2FTLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, indices, rows, init_weights, inference_mode)

    def add_adapter_output(self, result: torch.Tensor, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """Only the k selected rows/columns are computed: ``result[..., idx] += D x`` (rows) or
        ``result += D x[..., idx]`` (columns)."""
        d, idx = self.s2ft_delta[adapter_name], self.s2ft_indices[adapter_name]
        xd = self._cast_input_dtype(x, d.dtype)
        if self.s2ft_rows[adapter_name]:
            return torch.index_add(result, result.dim() - 1, idx, F.linear(xd, d).to(result.dtype))
        return result + F.linear(xd.index_select(-1, idx), d).to(result.dtype)
