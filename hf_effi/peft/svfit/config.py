"""SVFit configuration (Sun et al. 2024, "SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models
Using Singular Values", arXiv 2409.05926)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.utils import PeftType

from hf_effi.peft._base import DeltaConfig

__all__ = ["SVFitConfig"]


@dataclass
class SVFitConfig(DeltaConfig):
    """SVFit: ``W = U_r diag(s) V_r^T + W_e``; only the top-``r`` singular values ``s`` train.

    The trainable vector is the singular values themselves, initialised at the pretrained ``sigma_r`` (as the paper
    describes); the frozen ``sigma_r`` is kept so the delta is ``U_r diag(s - sigma_r) V_r^T`` and the adapter starts
    as the identity. Consequence of that choice: weight decay pulls ``s`` toward 0, not toward ``sigma_r``; train with
    weight_decay=0 (Trainer's default). ``r`` defaults to 16 (the paper reports ~16x fewer trainable parameters
    than LoRA; its per-model r is not given in the abstract).

    Args:
        r: number of top singular values trained per layer (``r <= min(in, out)``).
        target_modules / exclude_modules / layers_to_transform / layers_pattern / modules_to_save: as in LoRA.
        init_weights: True -> ``s = sigma_r`` (identity adapter); False -> ``s`` perturbed by 10% (for tests).
    """

    r: int = field(default=16, metadata={"help": "number of top singular values trained; r <= min(in, out)"})
    init_weights: bool = field(
        default=True, metadata={"help": "True: trainable values start at the pretrained singular values"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SVFIT
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r={self.r!r}: must be a positive int (number of singular values), e.g. 16")
        if self.target_parameters:
            raise ValueError("target_parameters: SVFit adapts nn.Linear modules only; use target_modules")
