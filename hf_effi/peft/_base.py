"""Shared machinery of hf_effi's additive tuners on ``nn.Linear``: ``y = base(x) + delta(x)``.

MoRA, PMSS, SVFit, SoRA, SLTrain and S2FT differ only in how ``delta`` is parameterised. Merge, unmerge, the
three-branch forward, the targeting config fields and the all-or-nothing target validation are the same, so they
live here once:

* :class:`DeltaConfig` holds the LoRA-style targeting fields (``target_modules``, ``exclude_modules``,
  ``target_parameters``, ``layers_to_transform``, ``layers_pattern``, ``modules_to_save``);
  :class:`NoBiasDeltaConfig` is the same with SoRA/SLTrain/S2FT's help strings plus ``bias`` and their checks;
* :class:`DeltaLayer` is the ``BaseTunerLayer`` mixin (reads in/out features, refuses non-Linear and quantized
  bases with a message naming the module);
* :class:`DeltaLinear` is the ``nn.Module`` half with ``merge``/``unmerge``/``forward`` (hooks: ``_owns``,
  ``get_delta_weight``, ``adapter_delta`` or ``add_adapter_output``); a concrete layer is
  ``class MoRALinear(DeltaLinear, MoRALayer)``;
* :class:`DeltaTuner` is the ``BaseTuner`` half: its ``inject_adapter`` runs :func:`validate_targets` on every module
  the config will wrap *before* any is replaced (for ``get_peft_model`` and ``add_adapter`` alike; ``"all-linear"``
  expanded as peft does), so a bad rank, a non-Linear or a quantized target leaves the model untouched.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _ExcludedModule,
    _maybe_include_all_linear_layers,
    check_adapters_to_merge,
)
from torch import nn

__all__ = [
    "DeltaConfig",
    "DeltaLayer",
    "DeltaLinear",
    "DeltaTuner",
    "NoBiasDeltaConfig",
    "check_plain_linear",
    "validate_targets",
]


def _none(help: str) -> Any:
    """A dataclass field defaulting to None with a ``help`` string."""
    return field(default=None, metadata={"help": help})


@dataclass
class DeltaConfig(PeftConfig):
    """The LoRA-style targeting fields of MoRA, PMSS and SVFit (a tuner's own fields follow these).

    Lists given for ``target_modules`` / ``exclude_modules`` are stored as sets, as LoRA does.
    """

    target_modules: list[str] | str | None = _none("names or regex of nn.Linear modules to adapt; default q_proj, v_proj")
    exclude_modules: list[str] | str | None = _none("names or regex to skip")
    target_parameters: list[str] | None = _none("unsupported; keep None")
    layers_to_transform: list[int] | int | None = _none("layer indices to adapt")
    layers_pattern: list[str] | str | None = _none("name of the layer list, used with layers_to_transform")
    modules_to_save: list[str] | None = _none("extra modules trained in full and saved (e.g. a classifier head)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)


@dataclass
class NoBiasDeltaConfig(DeltaConfig):
    """The targeting fields of SoRA, SLTrain and S2FT (their help strings) plus ``bias`` (only "none").

    Subclasses call :meth:`check_targeting` at the end of their ``__post_init__``.
    """

    target_modules: Optional[Union[list[str], str]] = _none(
        "module names, a regex or 'all-linear'; None: LoRA's default per architecture"
    )
    exclude_modules: Optional[Union[list[str], str]] = _none("module names (or a regex) not to adapt")
    target_parameters: Optional[list[str]] = _none("unsupported; must stay None")
    layers_to_transform: Optional[Union[list[int], int]] = _none("only adapt these layer indices")
    layers_pattern: Optional[Union[list[str], str]] = _none("the name of the layer list, used with layers_to_transform")
    modules_to_save: Optional[list[str]] = _none("extra modules trained in full and saved with the adapter")
    bias: str = field(default="none", metadata={"help": "only 'none' is supported"})

    def check_targeting(self, linear: str = "nn.Linear") -> None:
        """Refuse ``bias`` other than "none", ``target_parameters`` and ``layers_pattern`` without layers."""
        name = type(self).__name__
        if self.bias != "none":
            raise ValueError(f"{name}: bias={self.bias!r} is not supported; use bias='none'")
        if self.target_parameters:
            raise ValueError(f"{name}: target_parameters is not supported; adapt {linear} via target_modules")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError(f"{name}: layers_pattern needs layers_to_transform; pass both or neither")


_QUANT_PACKAGES = ("bitsandbytes", "hqq", "auto_gptq", "gptqmodel", "awq", "torchao", "optimum")


def check_plain_linear(module: nn.Module, key: str, method: str) -> nn.Linear:
    """The plain (unquantized) ``nn.Linear`` under ``module`` (its base layer if it is already a tuner layer), else
    ``TypeError`` naming ``key``: for other layer types, for layers of quantization packages and for quantized
    weights (non-float, or a ``Parameter`` subclass such as bitsandbytes' ``Params4bit``/``Int8Params``)."""
    base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    cls = type(base)
    weight = getattr(base, "weight", None)
    quantized = cls.__module__.split(".")[0] in _QUANT_PACKAGES or (
        isinstance(weight, torch.Tensor)
        and (not weight.is_floating_point() or type(weight) not in (nn.Parameter, torch.Tensor))
    )
    if quantized:
        held = f" holding a quantized weight ({type(weight).__name__} of dtype {weight.dtype})" if weight is not None else ""
        raise TypeError(
            f"{method}: target {key!r} is a quantized layer ({cls.__module__}.{cls.__name__}){held}, which {method} "
            "does not support: load the base model unquantized (fp32/bf16/fp16, no quantization_config) or use "
            "peft's LoRA for a quantized base"
        )
    if not isinstance(base, nn.Linear):
        raise TypeError(
            f"{method}: target {key!r} is {cls.__name__}, but {method} adapts nn.Linear layers only (only nn.Linear "
            "is supported): remove it from target_modules (e.g. target the q_proj/v_proj linears)"
        )
    return base


def validate_targets(
    tuner: Any, model: nn.Module, config: Any, adapter_name: str, check: Callable[[str, nn.Linear], None]
) -> None:
    """Check every module ``config`` targets before injection: at least one matches, each is a plain Linear, and
    ``check(key, linear)`` (the method's size rules) passes. Raises before anything is replaced.

    Mirrors the matching of ``BaseTuner.inject_adapter`` on a copy of the config: ``target_modules=None`` takes the
    tuner's per-architecture default, ``"all-linear"`` is expanded as peft does, and modules inside existing adapter
    layers (tuner layers and their parameter containers) are skipped.
    """
    method = type(config).__name__.removesuffix("Config")
    cfg = copy.deepcopy(config)
    if cfg.target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        defaults = type(tuner).target_module_mapping.get(model_type)
        if defaults is None:
            raise ValueError(
                f"{method}: no default target_modules for model_type={model_type!r}; "
                f"pass target_modules=[...] (known defaults: {sorted(type(tuner).target_module_mapping)})"
            )
        cfg.target_modules = set(defaults)
    cfg = _maybe_include_all_linear_layers(cfg, model)
    matched = []
    prefix = type(tuner).prefix
    inside_adapters: list[str] = []
    for key, module in model.named_modules():
        if not key or any(key.startswith(outer) for outer in inside_adapters):
            continue
        if isinstance(module, BaseTunerLayer):
            inside_adapters.append(key + ".")
        if any(part.startswith(prefix) for part in key.split(".")):
            continue  # an adapter container of this tuner
        found = tuner._check_target_module_exists(cfg, key)
        if not found or isinstance(found, _ExcludedModule):
            continue
        check(key, check_plain_linear(module, key, method))
        matched.append(key)
    if not matched:
        targets = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
        raise ValueError(
            f"{method}: target_modules={targets!r} matched no module of {type(model).__name__} (target modules not "
            "found in the base model); pass names of its nn.Linear layers, e.g. ['q_proj', 'v_proj']"
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
                    raise ValueError(
                        f"{self.method_name}: NaNs detected in the merged weights: adapter {name!r} seems to be broken"
                    )
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

    def __repr__(self) -> str:
        return self.adapter_layer_names[0].split("_")[0] + "." + super().__repr__()

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
                result = self.add_adapter_output(result, name, x)
        return result

    def add_adapter_output(self, result: torch.Tensor, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``result + delta(x)`` for one adapter; override when the delta is cheaper to add in place (e.g. rows)."""
        return result + self.adapter_delta(adapter_name, x).to(result.dtype)


DEFAULT_TARGETS = {arch: ["q_proj", "v_proj"] for arch in ("llama", "mistral", "qwen2", "gemma", "gemma2", "phi3")}


class DeltaTuner(BaseTuner):
    """``BaseTuner`` for a :class:`DeltaLinear` layer class: validates all targets first, then wraps them.

    Subclasses set ``prefix``, ``tuner_layer_cls``, ``linear_cls`` and, where needed, override ``check_target(key,
    linear, config)`` (raise ``ValueError`` naming the argument when the layer cannot take the config; the default
    requires ``config.r <= min(in, out)``) and ``layer_args``.
    """

    target_module_mapping = DEFAULT_TARGETS
    linear_cls: type = DeltaLinear

    def check_target(self, key: str, linear: nn.Linear, config: Any) -> None:
        bound = min(linear.in_features, linear.out_features)
        if config.r > bound:
            method = type(config).__name__.removesuffix("Config")
            raise ValueError(
                f"{method}: r={config.r} exceeds min(in, out)={bound} of {key!r} ({linear.in_features}->"
                f"{linear.out_features}); choose a smaller r"
            )

    def layer_args(self, config: Any, key: str, linear: nn.Linear) -> tuple:
        """Positional arguments after ``adapter_name`` of ``linear_cls(...)`` and ``update_layer(...)`` for the
        module ``key`` (``linear`` is its plain base Linear); the config itself by default."""
        return (config,)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        config = self.peft_config[adapter_name]
        if kwargs.get("state_dict") is None:
            validate_targets(self, model, config, adapter_name, lambda key, lin: self.check_target(key, lin, config))
        super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        method = type(config).__name__.removesuffix("Config")
        args = self.layer_args(config, current_key, check_plain_linear(target, current_key, method))
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, *args, inference_mode=config.inference_mode)
            return
        new_module = self.linear_cls(target, adapter_name, *args, inference_mode=config.inference_mode)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter does not train
        self._replace_module(parent, target_name, new_module, target)
