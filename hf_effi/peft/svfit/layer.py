"""SVFit layer: ``delta(x) = ((x @ V_r) * (s - sigma_r)) @ U_r.T`` from a one-off SVD of the pretrained weight.

``U_r``, ``V_r`` and ``sigma_r`` are persistent buffers (saved with the adapter), so loading never depends on the SVD
being bit-identical across machines; singular-vector signs are fixed (largest-magnitude entry of each ``U`` column
positive) so the SVD init itself is deterministic.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.utils.integrations import gather_params_ctx
from torch import nn

from hf_effi.peft._base import DeltaLayer, DeltaLinear

__all__ = ["SVFitLayer", "SVFitLinear", "top_singular"]


def top_singular(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U_r [out, r]``, ``sigma_r [r]``, ``V_r [in, r]`` of ``weight [out, in]`` in fp32, signs normalised."""
    U, S, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    U, S, V = U[:, :r], S[:r], Vh[:r, :].T
    pivot = U.abs().argmax(dim=0)
    sign = torch.sign(U[pivot, torch.arange(r)])
    sign[sign == 0] = 1.0
    return (U * sign).contiguous(), S.contiguous(), (V * sign).contiguous()


class SVFitLayer(DeltaLayer):
    adapter_layer_names = ("svfit_s",)
    other_param_names = ("svfit_U", "svfit_V", "svfit_sigma", "svfit_r")
    method_name = "SVFit"

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.svfit_s = nn.ParameterDict({})
        self.svfit_U = BufferDict({}, persistent=True)
        self.svfit_V = BufferDict({}, persistent=True)
        self.svfit_sigma = BufferDict({}, persistent=True)
        self.svfit_r: dict[str, int] = {}

    def update_layer(self, adapter_name: str, config, inference_mode: bool = False) -> None:
        r = config.r
        if r > min(self.in_features, self.out_features):
            raise ValueError(
                f"SVFit: r={r} exceeds min(in, out)={min(self.in_features, self.out_features)} of this layer; lower r"
            )
        base = self.get_base_layer()
        with gather_params_ctx(base.weight):
            U, S, V = top_singular(base.weight, r)
        self.svfit_U[adapter_name] = U
        self.svfit_V[adapter_name] = V
        self.svfit_sigma[adapter_name] = S
        values = S.clone()
        if not config.init_weights:
            values = values * (1.0 + 0.1 * torch.randn(r, generator=torch.Generator().manual_seed(0)))
        self.svfit_s[adapter_name] = nn.Parameter(values)
        self.svfit_r[adapter_name] = r
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _factors(self, adapter_name: str):
        s = self.svfit_s[adapter_name]
        U = self.svfit_U[adapter_name].to(s.dtype)
        V = self.svfit_V[adapter_name].to(s.dtype)
        return U, s - self.svfit_sigma[adapter_name].to(s.dtype), V

    def adapter_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        U, ds, V = self._factors(adapter_name)
        return ((self._cast_input_dtype(x, ds.dtype) @ V) * ds) @ U.T

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        U, ds, V = self._factors(adapter_name)
        return (U * ds) @ V.T


class SVFitLinear(DeltaLinear, SVFitLayer):
    """An ``nn.Linear`` with SVFit adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, **kwargs: Any) -> None:
        super().__init__()
        SVFitLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, inference_mode=config.inference_mode)
