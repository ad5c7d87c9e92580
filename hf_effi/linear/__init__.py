"""Linearized attention: ``linearize(model)`` turns a pretrained Transformer's softmax attention into linear
attention (LoLCATs, Hedgehog, Based, Liger, elu/relu baselines), decodes in constant memory, and saves/loads
through the Auto classes as model type ``hf_effi_linear``.

    >>> import hf_effi
    >>> lin = hf_effi.linearize(model, method="lolcats", window=64)
    >>> lin.generate(**inputs, max_new_tokens=32)        # per layer: recurrent state + 64-token window
    >>> lin.save_pretrained("lin"); AutoModelForCausalLM.from_pretrained("lin")   # after import hf_effi

Attention transfer hook (stage 1 of LoLCATs, used by ``AttentionTransferTrainer``):

* ``set_attention_transfer(model, True)``: in every forward, each linearized layer also computes the original
  softmax attention on the same q/k/v (no grad), stores ``module.transfer_mse`` (MSE between the per-head outputs
  before o_proj, over real tokens; grad flows only to the feature maps / window weights) and passes the *softmax*
  output on (teacher forcing: layers train independently, as in LoLCATs). Call the model with ``use_cache=False``.
* ``transfer_losses(model) -> {layer_idx: scalar tensor}`` after such a forward.
* ``linear_parameters(model)``: the parameters the conversion added, the only ones stage 1 trains (freeze the
  rest). Liger adds none.

Limits: padding reaches the layers through a forward pre-hook on the backbone (the 2-D ``attention_mask`` of the
latest backbone call), so call the model, not single decoder layers, when padding matters. Assisted decoding
(cache cropping) and static caches are refused with an error. Models already dispatched by accelerate
(device_map offloading hooks) must be linearized before dispatch, or saved and reloaded with ``device_map=``.
Encoders take the pure linear methods only (no non-causal window op).
"""

from __future__ import annotations

import torch
from torch import nn

from hf_effi.linear.attention import LinearizedAttention, LinearizedEncoderAttention
from hf_effi.linear.cache import LinearStateLayer
from hf_effi.linear.convert import is_linearized, linearize
from hf_effi.linear.feature_maps import FEATURE_MAPS, make_feature_map
from hf_effi.linear.methods import METHODS, LinearizeSettings
from hf_effi.linear.modeling import (
    HfEffiLinearConfig,
    HfEffiLinearForCausalLM,
    HfEffiLinearModel,
    save_linearized,
)

__all__ = ["FEATURE_MAPS", "METHODS", "HfEffiLinearConfig", "HfEffiLinearForCausalLM", "HfEffiLinearModel",
           "LinearStateLayer", "LinearizeSettings", "LinearizedAttention", "LinearizedEncoderAttention",
           "is_linearized", "linear_layers", "linear_parameters", "linearize", "make_feature_map",
           "save_linearized", "set_attention_transfer", "transfer_losses"]

_MODULES = (LinearizedAttention, LinearizedEncoderAttention)


def linear_layers(model: nn.Module) -> dict[int, nn.Module]:
    """The linearized attention modules of ``model`` (plain or peft-wrapped) by layer index."""
    return {m.layer_idx: m for m in model.modules() if isinstance(m, _MODULES)}


def _require_linear_layers(model: nn.Module) -> dict[int, nn.Module]:
    layers = linear_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no linearized attention; call hf_effi.linearize(model) first")
    return layers


def set_attention_transfer(model: nn.Module, enabled: bool) -> None:
    """Turn attention-transfer mode on or off for every linearized layer (see the module docstring)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    for module in _require_linear_layers(model).values():
        module.transfer_enabled = enabled
        module.transfer_mse = None


def transfer_losses(model: nn.Module) -> dict[int, torch.Tensor]:
    """``{layer_idx: MSE}`` from the last forward in transfer mode."""
    layers = _require_linear_layers(model)
    missing = sorted(i for i, m in layers.items() if m.transfer_mse is None)
    if missing:
        raise ValueError(f"no transfer loss for layers {missing}: call set_attention_transfer(model, True) and run "
                         "a forward (use_cache=False) first")
    return {i: layers[i].transfer_mse for i in sorted(layers)}


def linear_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters ``linearize`` added (feature maps, window weights), in layer order."""
    layers = _require_linear_layers(model)
    return [p for i in sorted(layers) for p in layers[i].linear_parameters()]
