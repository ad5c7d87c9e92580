"""Saving and loading linearized models through the Auto classes: one registered model type, ``hf_effi_linear``.

Its config nests the base model's config (``base_config``, a dict with its own ``model_type``) and the
linearization settings (``linearization``). Loading rebuilds the base architecture as ``Linearized<BaseClass>``, a
subclass whose ``__init__`` re-applies the conversion before transformers loads the weights, so dtype=,
device_map=, sharding and tied weights are handled by ``from_pretrained`` itself and every new parameter is read
from the checkpoint. ``save_pretrained`` of a linearized model writes the weights, the ``hf_effi_linear`` config
and a model card. Registration happens once, on ``import hf_effi.linear``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

from hf_effi.cards import write_model_card
from hf_effi.linear.convert import apply_linearization, is_linearized
from hf_effi.linear.methods import LinearizeSettings

__all__ = ["HfEffiLinearConfig", "HfEffiLinearForCausalLM", "HfEffiLinearModel", "LinearizedModelMixin",
           "linearized_class", "save_linearized"]

SETTINGS_ATTR = "hf_effi_linearization"


@strict
class HfEffiLinearConfig(PretrainedConfig):
    """Config of a linearized checkpoint: the base model's config + how its attention was linearized.

    Args:
        base_config: the base model's config as a dict (with ``model_type``), or a config object.
        linearization: ``LinearizeSettings.to_dict()`` (method, kind, feature map, window, layers, ...).
    """

    model_type = "hf_effi_linear"

    base_config: dict | PretrainedConfig | None = None
    linearization: dict | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.base_config, PretrainedConfig):
            self.base_config = self.base_config.to_dict()
        if self.base_config is not None:
            self.base_config = {k: v for k, v in self.base_config.items() if k != SETTINGS_ATTR}
        super().__post_init__(**kwargs)

    def to_base_config(self) -> PretrainedConfig:
        """The base architecture's config, carrying the settings so ``Linearized<Class>`` re-applies them."""
        if not self.base_config or "model_type" not in self.base_config or self.linearization is None:
            raise ValueError("this hf_effi_linear config has no base_config with a model_type or no linearization "
                             "settings; it was not written by hf_effi's save_pretrained")
        data = dict(self.base_config)
        base = AutoConfig.for_model(data.pop("model_type"), **data)
        LinearizeSettings.from_dict(self.linearization)  # fail early on settings this version cannot redo
        setattr(base, SETTINGS_ATTR, dict(self.linearization))
        return base


class LinearizedModelMixin:
    """Mixed in front of the base class by ``linearized_class``: re-applies the conversion recorded in the
    config on construction, and saves an ``hf_effi_linear`` config."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        settings = getattr(config, SETTINGS_ATTR, None)
        if settings is not None and not is_linearized(self):
            apply_linearization(self, LinearizeSettings.from_dict(settings))

    def save_pretrained(self, save_directory, *args, **kwargs):
        if kwargs.get("push_to_hub"):
            raise ValueError("push_to_hub=True is not supported for linearized models: save_pretrained(dir) first, "
                             "then upload the folder (huggingface_hub.upload_folder)")
        skip_card = kwargs.pop("skip_card", False)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            _write_linear_config(self, Path(save_directory))
            if not skip_card and not (Path(save_directory) / "README.md").exists():
                _write_card(self, Path(save_directory), metrics={}, tokens=None)


_CLASSES: dict[type, type] = {}


def linearized_class(base_cls: type) -> type:
    """``Linearized<base_cls>``: made once per base class and kept in this module so pickle finds it."""
    if issubclass(base_cls, LinearizedModelMixin):
        return base_cls
    if base_cls not in _CLASSES:
        name = f"Linearized{base_cls.__name__}"
        cls = type(name, (LinearizedModelMixin, base_cls), {"__module__": __name__, "__qualname__": name})
        _CLASSES[base_cls] = cls
        globals()[name] = cls
    return _CLASSES[base_cls]


def __getattr__(name: str) -> type:
    """``Linearized<Class>`` for any transformers model class, so a pickled linearized model unpickles in a fresh
    process (pickle looks the class up here by name)."""
    if name.startswith("Linearized"):
        import transformers

        base = getattr(transformers, name[len("Linearized"):], None)
        if isinstance(base, type) and issubclass(base, PreTrainedModel):
            return linearized_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _base_class(model: Any) -> type:
    return next(c for c in type(model).__mro__ if not issubclass(c, LinearizedModelMixin))


def _write_linear_config(model: Any, folder: Path) -> None:
    base = model.config.to_dict()
    base.pop(SETTINGS_ATTR, None)
    base["architectures"] = [_base_class(model).__name__]
    config = HfEffiLinearConfig(base_config=base, linearization=getattr(model.config, SETTINGS_ATTR),
                                architectures=[_base_class(model).__name__])
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def _write_card(model: Any, folder: Path, *, metrics: dict, tokens: dict | None, base_model: str | None = None) -> None:
    settings = dict(getattr(model.config, SETTINGS_ATTR))
    base_model = base_model or getattr(model.config, "_name_or_path", None) or None
    n_new = sum(p.numel() for m in model.modules() if hasattr(m, "linear_parameters") for p in m.linear_parameters())
    settings["new_parameters"] = n_new
    data = {f"tokens ({stage})": int(n) for stage, n in (tokens or {}).items()}
    write_model_card(folder, base_model=base_model, method=settings["method"],
                     summary=f"{_base_class(model).__name__} with its softmax attention linearized by hf_effi "
                             f"({settings['method']}, {settings['kind']} attention).",
                     settings=settings, data=data, metrics=metrics, tags=["linearize", "linear-attention"])


def save_linearized(model: Any, save_directory: str | Path, *, card_metrics: dict | None = None,
                    tokens: dict[str, int] | None = None, base_model: str | None = None, **save_kwargs) -> Path:
    """Save a linearized model (merging a peft LoRA first) with its ``hf_effi_linear`` config and model card.

    Args:
        model: a linearized model, or a ``PeftModel`` around one (merged with ``merge_and_unload()``, which
            changes that PeftModel's base model in place).
        save_directory: output folder.
        card_metrics: what was measured, name -> number or (number, unit), shown in the card.
        tokens: tokens used per stage, e.g. ``{"attention transfer": 20_000_000, "lora": 20_000_000}``.
        base_model: Hub id or path of the original model (default: the config's ``_name_or_path``).

    Returns the folder. ``save_kwargs`` go to ``save_pretrained`` (e.g. ``safe_serialization``).
    """
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    if not is_linearized(model) or not isinstance(model, LinearizedModelMixin):
        raise ValueError(f"save_linearized needs a linearized model (hf_effi.linearize), got {type(model).__name__}")
    folder = Path(save_directory)
    model.save_pretrained(folder, skip_card=True, **save_kwargs)
    _write_card(model, folder, metrics=dict(card_metrics or {}), tokens=tokens, base_model=base_model)
    return folder


class _LinearizedAutoEntry(PreTrainedModel):
    """What the Auto classes resolve ``hf_effi_linear`` to: never instantiated, it builds ``Linearized<Base>``."""

    config_class = HfEffiLinearConfig
    _base_mapping: Any = None

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is a loader; use AutoModel*.from_pretrained(dir) or "
                        "hf_effi.linearize(model)")

    @classmethod
    def _linearized_base(cls, config: HfEffiLinearConfig) -> tuple[type, PretrainedConfig]:
        base_config = config.to_base_config()
        try:
            base_cls = cls._base_mapping[type(base_config)]
        except KeyError:
            raise ValueError(f"{cls.__name__}: the base model type {base_config.model_type!r} has no class in "
                             f"this Auto mapping") from None
        return linearized_class(base_cls), base_config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        if not isinstance(config, HfEffiLinearConfig):
            hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder")
                   if k in kwargs}
            config = HfEffiLinearConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        model_cls, base_config = cls._linearized_base(config)
        return model_cls.from_pretrained(pretrained_model_name_or_path, *model_args, config=base_config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        model_cls, base_config = cls._linearized_base(config)
        return model_cls._from_config(base_config, **kwargs)


class HfEffiLinearForCausalLM(_LinearizedAutoEntry):
    _base_mapping = MODEL_FOR_CAUSAL_LM_MAPPING


class HfEffiLinearModel(_LinearizedAutoEntry):
    _base_mapping = MODEL_MAPPING


AutoConfig.register(HfEffiLinearConfig.model_type, HfEffiLinearConfig)
AutoModelForCausalLM.register(HfEffiLinearConfig, HfEffiLinearForCausalLM)
AutoModel.register(HfEffiLinearConfig, HfEffiLinearModel)
