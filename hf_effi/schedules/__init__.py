"""Learning-rate schedules: pure profiles of the step under one scheduler base whose state is numbers only."""

from hf_effi.schedules import profiles
from hf_effi.schedules.base import ProfileScheduler
from hf_effi.schedules.factory import SCHEDULES, make_scheduler, register_schedule, resolve_warmup

__all__ = ["SCHEDULES", "ProfileScheduler", "make_scheduler", "profiles", "register_schedule", "resolve_warmup"]
