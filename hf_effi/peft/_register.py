"""The one place where an hf_effi tuner enters peft.

peft 0.21 lets outside packages add tuners through ``peft.utils.register_peft_method``, but that function only
accepts names that are already members of the closed ``PeftType`` str-Enum. So :func:`register_tuner` first adds
the member (name == value, e.g. ``"MORA"``, so the plain JSON string and the member hash and compare equal), then
calls peft's own registration. A real enum member, not a bare string, is needed because transformers'
``PreTrainedModel.load_adapter`` calls ``peft_type.value.lower()``.

Saved adapters name their type in ``adapter_config.json``. A fresh interpreter that has not run ``import hf_effi``
cannot resolve it, and peft fails with a bare ``KeyError`` on that string. To make that error say what to do,
hf_effi writes ``"peft_type": "MORA (hf_effi tuner: pip install hf_effi, then import hf_effi before loading)"``
into the JSON and registers this string as an alias of ``MORA`` for loading. peft reads the JSON value only to
look up the config class; the in-memory config always holds the real ``PeftType.MORA``. Adapters whose JSON says
plain ``"MORA"`` load too.
"""

from __future__ import annotations

import enum
import json
import os
from importlib import metadata

from packaging.version import Version

__all__ = ["SUPPORTED_PEFT", "check_peft", "load_hint", "register_tuner", "registered_tuners"]

# (lowest supported, first unsupported): keep in step with hf_effi._compat.SUPPORTED and pyproject.toml.
SUPPORTED_PEFT: tuple[str, str] = ("0.21", "0.22")

# name -> (config_cls, model_cls) of every tuner hf_effi registered in this process.
_REGISTERED: dict[str, tuple[type, type]] = {}


def check_peft() -> None:
    """Raise ``ImportError`` naming the installed and supported peft versions when the registration path is missing.

    The registration relies on peft internals that changed across minor releases (``register_peft_method`` appeared
    in 0.15; tuner-owned state-dict hooks in 0.21), so anything outside the tested range is refused up front
    rather than failing later inside ``save_pretrained``.
    """
    low, high = SUPPORTED_PEFT
    fix = f"pip install 'peft>={low},<{high}'"
    try:
        installed = metadata.version("peft")
    except metadata.PackageNotFoundError:
        raise ImportError(f"hf_effi.peft needs peft>={low},<{high}, but peft is not installed: {fix}") from None
    version = Version(Version(installed).base_version)
    if not Version(low) <= version < Version(high):
        raise ImportError(f"hf_effi.peft supports peft>={low},<{high}, but peft {installed} is installed: {fix}")
    try:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING  # noqa: F401
        from peft.utils import PeftType, register_peft_method  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"peft {installed} lacks the tuner registration API hf_effi needs ({exc}): {fix}") from None
    for attr in ("_member_map_", "_value2member_map_", "_member_names_"):
        if not hasattr(PeftType, attr):
            raise ImportError(
                f"peft {installed}: PeftType has no {attr}, so hf_effi cannot add its tuner types; "
                f"use peft>={low},<{high} on CPython 3.9-3.13"
            )


def load_hint(key: str) -> str:
    """The ``peft_type`` string hf_effi writes into ``adapter_config.json`` for the tuner ``key`` (e.g. "MORA")."""
    return f"{key} (hf_effi tuner: pip install hf_effi, then import hf_effi before loading)"


def _extend_peft_type(key: str) -> enum.Enum:
    """Add ``key`` (name == value) to peft's closed ``PeftType`` enum; a no-op when it is already a member."""
    from peft.utils import PeftType

    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_ = key
    member._value_ = key
    member.__objclass__ = PeftType
    if hasattr(PeftType, "_sort_order_"):
        member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    type.__setattr__(PeftType, key, member)  # EnumType.__setattr__ refuses to (re)assign members
    if PeftType(key) is not member or PeftType[key] is not member or member not in list(PeftType):
        raise ImportError(
            f"could not add {key!r} to peft's PeftType on this Python: hf_effi.peft needs CPython 3.9-3.13"
        )
    return member


def _same_class(a: type, b: type) -> bool:
    """True when ``b`` is ``a`` re-created by a module reload (same module and qualified name)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _install_save_hint(config_cls: type, key: str) -> None:
    """Make ``config_cls.save_pretrained`` write :func:`load_hint` as the JSON ``peft_type`` (once per class)."""
    if getattr(config_cls, "_hf_effi_save_hint", None) == key:
        return
    plain_save = config_cls.save_pretrained

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        plain_save(self, save_directory, **kwargs)
        from peft.utils import CONFIG_NAME

        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path) as f:
            data = json.load(f)
        data["peft_type"] = load_hint(key)
        with open(path, "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True))

    save_pretrained.__doc__ = plain_save.__doc__
    config_cls.save_pretrained = save_pretrained
    config_cls._hf_effi_save_hint = key


def register_tuner(
    *, name: str, config_cls: type, model_cls: type, prefix: str, is_mixed_compatible: bool = False
) -> None:
    """Register an hf_effi tuner with peft so ``get_peft_model``, ``save_pretrained`` and loading all work.

    Args:
        name: lower-case method name, e.g. ``"mora"``; the peft type is ``name.upper()``.
        config_cls: the ``PeftConfig`` dataclass; its ``__post_init__`` must set ``peft_type = PeftType[NAME]``.
        model_cls: the ``BaseTuner`` subclass; its ``prefix`` must equal ``prefix``.
        prefix: the attribute prefix of every adapter tensor, e.g. ``"mora_"``.
        is_mixed_compatible: passed on to peft (``PeftMixedModel`` itself only accepts peft's own types).

    Idempotent: importing twice, or reloading the tuner's module (new class objects, same qualified names), updates
    the mappings instead of failing. A name that another package already registered raises ``ValueError``.
    """
    check_peft()
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import register_peft_method

    if not isinstance(name, str) or not name or not name.islower() or name.endswith("_") or not name.isidentifier():
        raise ValueError(f"name={name!r}: use a lower-case identifier without a trailing '_', e.g. 'mora'")
    if prefix != f"{name}_" and not (isinstance(prefix, str) and prefix.endswith("_")):
        raise ValueError(f"prefix={prefix!r}: use the method name plus '_', e.g. {name + '_'!r}")
    if getattr(model_cls, "prefix", prefix) != prefix:
        raise ValueError(
            f"prefix={prefix!r} differs from {model_cls.__name__}.prefix={model_cls.prefix!r}; make them equal"
        )
    key = name.upper()
    existing = PEFT_TYPE_TO_CONFIG_MAPPING.get(key)
    if existing is not None and not _same_class(existing, config_cls):
        raise ValueError(
            f"name={name!r}: peft already has a tuner {key} ({existing.__module__}.{existing.__qualname__}); "
            "choose another name"
        )
    member = _extend_peft_type(key)
    if existing is None:
        register_peft_method(
            name=name,
            config_cls=config_cls,
            model_cls=model_cls,
            prefix=prefix,
            is_mixed_compatible=is_mixed_compatible,
        )
    else:  # re-import or importlib.reload: point peft at the new class objects
        PEFT_TYPE_TO_PREFIX_MAPPING[member] = prefix
        PEFT_TYPE_TO_CONFIG_MAPPING[member] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[member] = model_cls
        if is_mixed_compatible:
            PEFT_TYPE_TO_MIXED_MODEL_MAPPING[member] = model_cls
    PEFT_TYPE_TO_CONFIG_MAPPING[load_hint(key)] = config_cls  # lets the hinted JSON string load
    _install_save_hint(config_cls, key)
    _REGISTERED[name] = (config_cls, model_cls)


def registered_tuners() -> dict[str, tuple[type, type]]:
    """``{name: (config_cls, model_cls)}`` for every tuner hf_effi registered in this process, sorted by name."""
    return dict(sorted(_REGISTERED.items()))
