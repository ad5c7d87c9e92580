"""PMSS layer: ``delta(x) = scaling * ((x @ R.T) @ U.T) @ C.T`` with ``C``, ``R`` frozen slices of the pretrained W.

``C`` and ``R`` are stored as persistent buffers (saved with the adapter): after a merge the base weight changes, so
they cannot be re-read from it, and storing them makes a saved adapter independent of how the base was modified.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.utils.integrations import gather_params_ctx
from torch import nn

from hf_effi.peft._base import DeltaLayer, DeltaLinear

__all__ = ["PMSSLayer", "PMSSLinear", "select_skeleton"]


def select_skeleton(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``r`` largest-norm columns and rows of ``weight`` ``[out, in]``, each sorted ascending.

    Deterministic: a stable sort on ``-norm`` breaks ties by lower index.
    """
    w = weight.detach().float()
    col_norm = w.norm(dim=0)
    row_norm = w.norm(dim=1)
    cols = torch.sort(torch.argsort(-col_norm, stable=True)[:r]).values
    rows = torch.sort(torch.argsort(-row_norm, stable=True)[:r]).values
    return cols, rows


class PMSSLayer(DeltaLayer):
    adapter_layer_names = ("pmss_U",)
    other_param_names = ("pmss_C", "pmss_R", "pmss_r", "pmss_scaling")
    method_name = "PMSS"

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.pmss_U = nn.ParameterDict({})
        self.pmss_C = BufferDict({}, persistent=True)
        self.pmss_R = BufferDict({}, persistent=True)
        self.pmss_r: dict[str, int] = {}
        self.pmss_scaling: dict[str, float] = {}

    def update_layer(self, adapter_name: str, config, inference_mode: bool = False) -> None:
        r = config.r
        if r > min(self.in_features, self.out_features):
            raise ValueError(
                f"PMSS: r={r} exceeds min(in, out)={min(self.in_features, self.out_features)} of this layer; lower r"
            )
        base = self.get_base_layer()
        with gather_params_ctx(base.weight):
            weight = base.weight.detach()
            cols, rows = select_skeleton(weight, r)
            self.pmss_C[adapter_name] = weight[:, cols].float().clone()  # [out, r]
            self.pmss_R[adapter_name] = weight[rows, :].float().clone()  # [r, in]
        core = torch.zeros(r, r)
        if not config.init_weights:
            scale = 1.0 / float(self.pmss_C[adapter_name].norm() * self.pmss_R[adapter_name].norm() + 1e-6)
            core.normal_(0.0, scale * r, generator=torch.Generator().manual_seed(0))
        self.pmss_U[adapter_name] = nn.Parameter(core)
        self.pmss_r[adapter_name] = r
        self.pmss_scaling[adapter_name] = config.scaling
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def adapter_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        U = self.pmss_U[adapter_name]
        C = self.pmss_C[adapter_name].to(U.dtype)
        R = self.pmss_R[adapter_name].to(U.dtype)
        x = self._cast_input_dtype(x, U.dtype)
        return (x @ R.T @ U.T @ C.T) * self.pmss_scaling[adapter_name]

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        U = self.pmss_U[adapter_name]
        C = self.pmss_C[adapter_name].to(U.dtype)
        R = self.pmss_R[adapter_name].to(U.dtype)
        return C @ U @ R * self.pmss_scaling[adapter_name]


class PMSSLinear(DeltaLinear, PMSSLayer):
    """An ``nn.Linear`` with PMSS adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, **kwargs: Any) -> None:
        super().__init__()
        PMSSLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, inference_mode=config.inference_mode)
