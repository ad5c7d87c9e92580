"""Shared machinery of hf_effi's additive tuners on ``nn.Linear``: ``y = base(x) + delta(x)``.

MoRA, PMSS and SVFit differ only in how ``delta`` is parameterised. Merge, unmerge, the three-branch forward and
the all-or-nothing target validation are the same, so they live here once:

* :class:`DeltaLayer` is the ``BaseTunerLayer`` mixin (reads in/out features, refuses non-Linear and quantized
  bases with a message naming the module);
* :class:`DeltaLinear` is the ``nn.Module`` half with ``merge``/``unmerge``/``forward``; a concrete layer is
  ``class MoRALinear(DeltaLinear, MoRALayer)``;
* :class:`DeltaTuner` is the ``BaseTuner`` half: its ``inject_adapter`` runs :func:`validate_targets` on every module
  the config will wrap *before* any is replaced (for ``get_peft_model`` and ``add_adapter`` alike), so a bad rank
  or a non-Linear target leaves the model untouched.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from torch import nn

__all__ = ["DeltaLayer", "DeltaLinear", "DeltaTuner", "check_plain_linear", "validate_targets"]


def check_plain_linear(module: nn.Module, key: str, method: str) -> nn.Linear:
    """Return ``module`` if it is a plain (unquantized) ``nn.Linear``, else raise ``TypeError`` naming ``key``."""
    cls = type(module)
    quantized = cls.__module__.split(".")[0] in {"bitsandbytes", "hqq", "auto_gptq", "gptqmodel", "awq", "optimum"}
    weight = getattr(module, "weight", None)
    quantized = quantized or (weight is not None and not (weight.dtype.is_floating_point))
    if quantized:
        raise TypeError(
            f"{method}: target {key!r} is a quantized layer ({cls.__module__}.{cls.__name__}), which {method} does not "
            "support: load the base model in fp32/bf16 (no quantization_config) or use LoRA for a quantized base"
        )
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"{method}: target {key!r} is {cls.__name__}, but {method} adapts nn.Linear layers only: "
            "remove it from target_modules (e.g. target the q_proj/v_proj linears)"
        )
    return module


def validate_targets(
    tuner: Any, model: nn.Module, config: Any, adapter_name: str, check: Callable[[str, nn.Linear], None]
) -> None:
    """Check every module ``config`` targets before injection: at least one matches, each is a plain Linear, and
    ``check(key, linear)`` (the method's size rules) passes. Raises before anything is replaced.
    """
    method = type(config).__name__.removesuffix("Config")
    cfg = copy.copy(config)
    if cfg.target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        defaults = type(tuner).target_module_mapping.get(model_type)
        if defaults is None:
            raise ValueError(
                f"{method}: no default target_modules for model_type={model_type!r}; "
                f"pass target_modules=[...] (known defaults: {sorted(type(tuner).target_module_mapping)})"
            )
        cfg.target_modules = set(defaults)
    matched = []
    prefix = type(tuner).prefix
    for key, module in model.named_modules():
        if not key or prefix in key.rsplit(".", 1)[-1]:
            continue
        if any(part.startswith(prefix) for part in key.split(".")):
            continue  # inside an existing adapter container
        found = tuner._check_target_module_exists(cfg, key)
        if not found or type(found).__name__ == "_ExcludedModule":
            continue
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        check(key, check_plain_linear(base, key, method))
        matched.append(key)
    if not matched:
        targets = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
        raise ValueError(
            f"{method}: target_modules={targets!r} matched no module of {type(model).__name__}; "
            "pass names of its nn.Linear layers, e.g. ['q_proj', 'v_proj']"
        )


class DeltaLayer(BaseTunerLayer):
    """Mixin state shared by the tuners: the base layer, merge bookkeeping and in/out features."""

    method_name = "delta"

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self._disable_adapters = False
        self.merged_adapters = []
        self.kwargs = kwargs
        base = check_plain_linear(self.get_base_layer(), type(base_layer).__name__, self.method_name)
        self.in_features, self.out_features = base.in_features, base.out_features

    def adapter_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``delta(x)`` for one adapter, shape ``[..., out_features]`` (computed in the adapter's dtype)."""
        raise NotImplementedError

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense ``[out_features, in_features]`` matrix with ``delta(x) == x @ delta_weight.T``."""
        raise NotImplementedError

    def _owns(self, adapter_name: str) -> bool:
        return adapter_name in getattr(self, self.adapter_layer_names[0])


class DeltaLinear(nn.Module):
    """``merge``/``unmerge``/``forward`` for a :class:`DeltaLayer` on ``nn.Linear`` (put it first in the bases)."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or named) adapters' delta to the base weight; ``safe_merge`` checks for NaN/inf first."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in adapter_names:
            if not self._owns(name):
                continue
            delta = self.get_delta_weight(name).to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights: adapter {name!r} seems to be broken")
                base.weight.data = merged
            else:
                base.weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract merged adapters from the base weight, last merged first."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if self._owns(name):
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
            if self._owns(name):
                result = result + self.adapter_delta(name, x).to(result.dtype)
        return result


DEFAULT_TARGETS = {arch: ["q_proj", "v_proj"] for arch in ("llama", "mistral", "qwen2", "gemma", "gemma2", "phi3")}


class DeltaTuner(BaseTuner):
    """``BaseTuner`` for a :class:`DeltaLinear` layer class: validates all targets first, then wraps them.

    Subclasses set ``prefix``, ``tuner_layer_cls``, ``linear_cls`` and implement ``check_target(key, linear,
    config)`` (raise ``ValueError`` naming the argument when the layer cannot take the config).
    """

    target_module_mapping = DEFAULT_TARGETS
    linear_cls: type = DeltaLinear

    def check_target(self, key: str, linear: nn.Linear, config: Any) -> None:
        raise NotImplementedError

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        config = self.peft_config[adapter_name]
        if kwargs.get("state_dict") is None:
            validate_targets(self, model, config, adapter_name, lambda key, lin: self.check_target(key, lin, config))
        super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, config, inference_mode=config.inference_mode)
            return
        new_module = self.linear_cls(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter does not train
        self._replace_module(parent, target_name, new_module, target)
