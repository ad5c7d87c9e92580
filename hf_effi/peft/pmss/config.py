"""PMSS configuration (Wang et al., COLING 2025, "PMSS: Pretrained Matrices Skeleton Selection for LLM
Fine-tuning", arXiv 2409.16722)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.utils import PeftType

from hf_effi.peft._base import DeltaConfig

__all__ = ["PMSSConfig"]


@dataclass
class PMSSConfig(DeltaConfig):
    """PMSS: ``delta = C @ U @ R`` with ``C`` = r columns and ``R`` = r rows of the pretrained weight; only the
    ``r x r`` core ``U`` trains (zero-initialised, so training starts at the base model).

    The paper's exact selection rule is not spelled out in its abstract; we pick the ``r`` columns and the ``r`` rows
    of largest L2 norm (a standard deterministic CUR skeleton), ties broken by index. ``r`` defaults to 64: PMSS's
    point is a high-rank update at ``r**2`` trainable parameters, well below LoRA's ``r * (in + out)``.

    Args:
        r: number of skeleton rows/columns; the trainable core is ``r x r``.
        scaling: multiplier on ``C @ U @ R`` (1.0).
        target_modules / exclude_modules / layers_to_transform / layers_pattern / modules_to_save: as in LoRA.
        init_weights: True -> ``U = 0``; False -> small random ``U`` (for tests).
    """

    r: int = field(default=64, metadata={"help": "skeleton size; trainable core is r x r; r <= min(in, out)"})
    scaling: float = field(default=1.0, metadata={"help": "multiplier on C @ U @ R"})
    init_weights: bool = field(default=True, metadata={"help": "True: U = 0 so training starts at the base model"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.PMSS
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r={self.r!r}: must be a positive int (skeleton size), e.g. 64")
        if self.target_parameters:
            raise ValueError("target_parameters: PMSS adapts nn.Linear modules only; use target_modules")
