"""MoRA layer: ``delta(x) = decompress(M @ compress(x))`` with non-parameterised compress/decompress.

Operators (our reading of the paper's Eq. 6 and Eq. 9; all are linear in ``x``, so the dense delta weight is the
adapter applied to the identity and "forward == merged forward" holds by construction):

* type 1, sharing: zero-pad ``x`` to ``n * r_hat`` features, sum the ``n`` chunks -> ``r_hat`` features, apply
  ``M``, tile the result to ``d_out`` features (truncating the last copy).
* type 6, RoPE: zero-pad ``x`` to ``n`` chunks of ``r_hat``, rotate chunk ``i`` by RoPE angles
  ``i * base**(-2j/r_hat)`` (pairs ``(j, j + r_hat/2)``), apply ``M`` to every chunk, concatenate the ``n`` outputs
  and tile/truncate to ``d_out``.

The reference code pads the input by repeating its first features; we pad with zeros (simpler and identical when
``r_hat`` divides ``d_in``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hf_effi.peft._base import DeltaLayer, DeltaLinear

__all__ = ["MoRALayer", "MoRALinear", "mora_compress", "mora_decompress", "mora_rank", "rope_cos_sin"]


def mora_rank(in_features: int, out_features: int, r: int, mora_type: int) -> int:
    """Side of the square matrix matching LoRA rank ``r``: ``floor(sqrt((in + out) * r) + 0.5)``, even for type 6."""
    r_hat = int(math.floor(math.sqrt((in_features + out_features) * r) + 0.5))
    return r_hat // 2 * 2 if mora_type == 6 else r_hat


def rope_cos_sin(n_chunks: int, r_hat: int, base: float, device=None, dtype=torch.float32):
    """``cos, sin`` of shape ``[n_chunks, r_hat]``: chunk ``i`` is rotated by angle ``i * base**(-2j/r_hat)``."""
    inv_freq = base ** (-torch.arange(0, r_hat, 2, device=device, dtype=torch.float64) / r_hat)
    angles = torch.arange(n_chunks, device=device, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def mora_compress(x: torch.Tensor, r_hat: int, mora_type: int, rope_base: float = 10000.0) -> torch.Tensor:
    """``[..., d_in]`` -> ``[..., r_hat]`` (type 1) or ``[..., n_chunks, r_hat]`` (type 6)."""
    d_in = x.shape[-1]
    n = -(-d_in // r_hat)
    if n * r_hat != d_in:
        x = torch.nn.functional.pad(x, (0, n * r_hat - d_in))
    chunks = x.reshape(*x.shape[:-1], n, r_hat)
    if mora_type == 1:
        return chunks.sum(dim=-2)
    cos, sin = rope_cos_sin(n, r_hat, rope_base, device=x.device, dtype=x.dtype)
    return chunks * cos + _rotate_half(chunks) * sin


def mora_decompress(h: torch.Tensor, out_features: int, mora_type: int) -> torch.Tensor:
    """``[..., r_hat]`` or ``[..., n_chunks, r_hat]`` -> ``[..., out_features]`` by flattening, tiling, truncating."""
    if mora_type == 6:
        h = h.reshape(*h.shape[:-2], -1)
    width = h.shape[-1]
    reps = -(-out_features // width)
    if reps > 1:
        h = h.repeat(*([1] * (h.dim() - 1)), reps)
    return h[..., :out_features]


class MoRALayer(DeltaLayer):
    adapter_layer_names = ("mora_M",)
    other_param_names = ("mora_r", "mora_r_hat", "mora_type", "mora_rope_base")
    method_name = "MoRA"

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.mora_M = nn.ParameterDict({})
        self.mora_r: dict[str, int] = {}
        self.mora_r_hat: dict[str, int] = {}
        self.mora_type: dict[str, int] = {}
        self.mora_rope_base: dict[str, float] = {}

    def update_layer(self, adapter_name: str, config, inference_mode: bool = False) -> None:
        r_hat = mora_rank(self.in_features, self.out_features, config.r, config.mora_type)
        if r_hat < 2 or r_hat > min(self.in_features, self.out_features):
            raise ValueError(
                f"MoRA: r={config.r} gives r_hat={r_hat}, outside [2, min(in, out)={min(self.in_features, self.out_features)}]"
                " for this layer; lower r"
            )
        self.mora_r[adapter_name] = config.r
        self.mora_r_hat[adapter_name] = r_hat
        self.mora_type[adapter_name] = config.mora_type
        self.mora_rope_base[adapter_name] = config.rope_base
        weight = torch.zeros(r_hat, r_hat)
        if not config.init_weights:
            weight.normal_(0.0, 1.0 / r_hat, generator=torch.Generator().manual_seed(0))
        self.mora_M[adapter_name] = nn.Parameter(weight)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def adapter_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        M = self.mora_M[adapter_name]
        kind = self.mora_type[adapter_name]
        h = mora_compress(
            self._cast_input_dtype(x, M.dtype), self.mora_r_hat[adapter_name], kind, self.mora_rope_base[adapter_name]
        )
        return mora_decompress(h @ M.T, self.out_features, kind)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        M = self.mora_M[adapter_name]
        eye = torch.eye(self.in_features, device=M.device, dtype=M.dtype)
        return self.adapter_delta(adapter_name, eye).T


class MoRALinear(DeltaLinear, MoRALayer):
    """An ``nn.Linear`` with MoRA adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, **kwargs: Any) -> None:
        super().__init__()
        MoRALayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, inference_mode=config.inference_mode)
