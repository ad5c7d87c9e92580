"""Shared pieces of the recipes: arguments from a YAML config plus command-line overrides, and a step timer.

A recipe is launched as

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/<name>.py --config recipes/configs/<name>.yaml \
        --max_steps 20 --learning_rate 3e-3

The YAML gives every field by its dataclass name; ``--name value`` on the command line wins over the YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import statistics
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainerCallback

__all__ = ["StepTimer", "parse_recipe_args"]


def _field_types(dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Every init field of every dataclass, name -> resolved type hint."""
    found: dict[str, Any] = {}
    for dtype in dataclass_types:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init:
                found[f.name] = hints.get(f.name, f.type)
    return found


def _required(dataclass_types: Sequence[type]) -> list[str]:
    return [
        f.name
        for dtype in dataclass_types
        for f in dataclasses.fields(dtype)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Numbers written in a form YAML 1.1 reads as strings (``1e-3``) become the field's int/float."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not isinstance(value, str) or str in options:
        return value
    for kind in (int, float):
        if kind in options:
            try:
                return kind(value)
            except ValueError:
                continue
    if int in options or float in options:
        raise ValueError(f"config key {name}={value!r} must be a number; write e.g. {name}: 0.001")
    return value


def _load_config(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ValueError(f"--config {path!r} does not exist; pass a YAML file such as recipes/configs/quickstart.yaml")
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path!r} must hold a YAML mapping of field: value, got {type(loaded).__name__}")
    return loaded


def parse_recipe_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Fill ``dataclass_types`` from ``--config path.yaml`` and ``--field value`` overrides (the command line wins).

    Args:
        dataclass_types: the argument dataclasses, e.g. ``(QuickstartArguments, EffiTrainingArguments)``; field
            names must not repeat across them.
        argv: the command line without the program name (default: ``sys.argv[1:]``).

    Returns:
        One instance per dataclass, in the order given. ``--help`` prints every field and exits.
    """
    dataclass_types = tuple(dataclass_types)
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", default=None, help="YAML file of field: value; command-line flags override it")
    # Only what the command line names may override the YAML: no defaults, nothing required at this stage.
    for action in parser._actions:
        if action.dest not in ("help", "config"):
            action.default, action.required = argparse.SUPPRESS, False
    given, unknown = parser.parse_known_args(argv)
    types_by_name = _field_types(dataclass_types)
    if unknown:
        flags = [a for a in unknown if a.startswith("-")] or unknown
        close = difflib.get_close_matches(flags[0].lstrip("-").replace("-", "_"), list(types_by_name), n=3)
        hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
        raise ValueError(f"unknown command-line arguments {unknown}.{hint} Run with --help for the valid flags.")
    overrides = vars(given)
    config_path = overrides.pop("config", None)
    values = _load_config(config_path) if config_path else {}
    for key in values:
        if key not in types_by_name:
            close = difflib.get_close_matches(str(key), list(types_by_name), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"config key {key!r} in {config_path} is not a field of "
                             f"{', '.join(d.__name__ for d in dataclass_types)}.{hint}")
    values = {k: _coerce(k, v, types_by_name[k]) for k, v in values.items()}
    values.update(overrides)
    missing = [name for name in _required(dataclass_types) if name not in values]
    if missing:
        raise ValueError(f"missing required arguments {missing}: set them in the --config YAML or pass "
                         + " ".join(f"--{m} VALUE" for m in missing))
    return parser.parse_dict(values)


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (forward + backward of all micro-batches, clipping, optimizer step) and
    of the optimizer step alone, from Trainer's callback events."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.optimizer_seconds: list[float] = []
        self._step_start = self._optimizer_start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_seconds.append(time.perf_counter() - self._optimizer_start)

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self._step_start)

    @staticmethod
    def _median(seconds: list[float]) -> float:
        if not seconds:
            raise ValueError("StepTimer recorded no steps; was it passed to the Trainer in callbacks=[...]?")
        # The first step pays one-time costs (lazy state allocation, allocator warm-up); leave it out when we can.
        return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)

    def median_step_seconds(self) -> float:
        """Median seconds per optimizer step, the first step left out."""
        return self._median(self.step_seconds)

    def median_optimizer_seconds(self) -> float:
        """Median seconds of ``optimizer.step()`` alone, the first step left out."""
        return self._median(self.optimizer_seconds)
