"""Optimizers: ``make`` / ``make_optimizer``, the registry, and the registered methods (one file per family)."""

from hf_effi.optim import baselines  # noqa: E402,F401  (registers adamw, sgd, adafactor)
from hf_effi.optim.factory import (
    OPTIMIZERS,
    OptimizerFactory,
    make,
    make_cls_and_kwargs,
    make_optimizer,
    register_optimizer,
)
from hf_effi.optim.param_groups import build_param_groups, select_target_modules

__all__ = [
    "OPTIMIZERS",
    "OptimizerFactory",
    "build_param_groups",
    "make",
    "make_cls_and_kwargs",
    "make_optimizer",
    "register_optimizer",
    "select_target_modules",
]
