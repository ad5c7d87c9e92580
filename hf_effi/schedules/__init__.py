"""Learning-rate schedules: pure profiles of the step under one scheduler base whose state is numbers only."""

from hf_effi.schedules import commands, laws, laws_commands, profiles
from hf_effi.schedules.base import ProfileScheduler
from hf_effi.schedules.factory import SCHEDULES, make_scheduler, register_schedule, resolve_warmup
from hf_effi.schedules.laws import (
    LossCurveParams,
    LossCurveRun,
    StepLawSuggestion,
    annealing_areas,
    fit_loss_curve,
    noise_scale_from_norms,
    predict_loss_curve,
    read_loss_log,
    step_law,
    step_law_batch_size,
    step_law_lr,
)
from hf_effi.schedules.refined import refine, refined_multipliers

__all__ = [
    "SCHEDULES",
    "LossCurveParams",
    "LossCurveRun",
    "StepLawSuggestion",
    "annealing_areas",
    "fit_loss_curve",
    "laws",
    "laws_commands",
    "noise_scale_from_norms",
    "predict_loss_curve",
    "read_loss_log",
    "step_law",
    "step_law_batch_size",
    "step_law_lr",
    "ProfileScheduler",
    "commands",
    "make_scheduler",
    "profiles",
    "refine",
    "refined_multipliers",
    "register_schedule",
    "resolve_warmup",
]
