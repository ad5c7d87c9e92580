"""Target checks shared by hf_effi's SoRA, SLTrain and S²FT tuners: every targeted module must be a plain
(unquantized) ``nn.Linear`` whose shape allows the requested size, and this is checked for all targets before any
module is replaced, so a failed ``get_peft_model`` / ``add_adapter`` leaves the model as it was."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, _ExcludedModule, _maybe_include_all_linear_layers
from torch import nn

__all__ = ["check_plain_linear", "validate_targets"]

_QUANT_PACKAGES = ("bitsandbytes", "auto_gptq", "gptqmodel", "hqq", "awq", "torchao", "optimum")


def check_plain_linear(module: nn.Module, key: str, method: str) -> nn.Linear:
    """The ``nn.Linear`` under ``module``; ``TypeError`` naming the module for other layer types and for quantized
    weights (bitsandbytes ``Params4bit``/``Int8Params`` and the like), whose merge and forward these tuners lack."""
    base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    if not isinstance(base, nn.Linear):
        raise TypeError(f"{method}: target module {key!r} is a {type(base).__name__}, but only nn.Linear is "
                        f"supported; remove it from target_modules")
    weight = base.weight
    quantized = (not weight.is_floating_point() or type(weight) not in (nn.Parameter, torch.Tensor)
                 or type(base).__module__.split(".")[0] in _QUANT_PACKAGES)
    if quantized:
        raise TypeError(f"{method}: target module {key!r} has a quantized weight ({type(base).__name__} holding a "
                        f"{type(weight).__name__} of dtype {weight.dtype}), which {method} does not support; load the "
                        f"base model unquantized (fp32/bf16/fp16) or use peft's LoRA for a quantized base")
    return base


def validate_targets(tuner, peft_config, model: nn.Module, check: Callable[[nn.Linear, str], None],
                     method: str) -> None:
    """Run ``check(linear, key)`` on every module ``peft_config`` targets, before anything is replaced.

    Mirrors the matching of ``BaseTuner.inject_adapter`` (including the "all-linear" expansion, done here on a copy
    of the config) and skips modules inside existing adapter layers, as it does.
    """
    config = _maybe_include_all_linear_layers(copy.deepcopy(peft_config), model)
    inside_adapters: list[str] = []
    for key, module in model.named_modules():
        if not key:
            continue
        if any(key.startswith(prefix) for prefix in inside_adapters):
            continue
        if isinstance(module, BaseTunerLayer):
            inside_adapters.append(key + ".")
        matched = tuner._check_target_module_exists(config, key)
        if not matched or isinstance(matched, _ExcludedModule):
            continue
        check(check_plain_linear(module, key, method), key)
