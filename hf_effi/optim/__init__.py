"""Optimizers: ``make`` / ``make_optimizer``, the registry, and the registered methods (one file per family)."""

# Each module registers its methods on import.
from hf_effi.optim import baselines, came, lamb, lars, lomo, schedule_free, spam, subspace  # noqa: F401
from hf_effi.optim.batch_rules import scale_beta2, scale_ema
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
    "scale_beta2",
    "scale_ema",
    "select_target_modules",
]
