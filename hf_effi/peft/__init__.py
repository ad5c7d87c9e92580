"""New peft tuner types, registered into peft on ``import hf_effi`` (see ``_register.py``).

    >>> import hf_effi
    >>> from peft import get_peft_model
    >>> model = get_peft_model(base, hf_effi.peft.MoRAConfig(r=8, target_modules=["q_proj", "v_proj"]))

Each tuner is a folder with the peft triad (config.py, layer.py, model.py); importing the folder registers it.
"""

from __future__ import annotations

from hf_effi.peft._register import register_tuner, registered_tuners

# --- peft_core tuners (MoRA, PMSS, SVFit) ---
from hf_effi.peft.mora import MoRAConfig, MoRAModel
from hf_effi.peft.pmss import PMSSConfig, PMSSModel

# --- peft_more tuners (SoRA, SLTrain, S2FT) ---
from hf_effi.peft.s2ft import S2FTConfig, S2FTModel
from hf_effi.peft.sltrain import SLTrainConfig, SLTrainModel, densify_sltrain, sltrain_model
from hf_effi.peft.sora import SoRACallback, SoRAConfig, SoRAModel, export_lora, sora_proximal_step
from hf_effi.peft.svfit import SVFitConfig, SVFitModel

__all__ = [
    "register_tuner",
    "registered_tuners",
    # peft_core
    "MoRAConfig",
    "MoRAModel",
    "PMSSConfig",
    "PMSSModel",
    "SVFitConfig",
    "SVFitModel",
    # peft_more
    "S2FTConfig",
    "S2FTModel",
    "SLTrainConfig",
    "SLTrainModel",
    "SoRACallback",
    "SoRAConfig",
    "SoRAModel",
    "densify_sltrain",
    "export_lora",
    "sltrain_model",
    "sora_proximal_step",
]
