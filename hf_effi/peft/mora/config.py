"""MoRA configuration (Jiang et al. 2024, "MoRA: High-Rank Updating for Parameter-Efficient Fine-Tuning",
arXiv 2405.12130)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.utils import PeftType

from hf_effi.peft._base import DeltaConfig

__all__ = ["MoRAConfig"]


@dataclass
class MoRAConfig(DeltaConfig):
    """MoRA: one trainable square matrix ``M`` (``r_hat x r_hat``) between fixed compress/decompress operators.

    ``r`` is the LoRA rank whose parameter count MoRA matches: ``r_hat = floor(sqrt((d_in + d_out) * r) + 0.5)``
    (made even for ``mora_type=6``), so ``r_hat**2 ~= r * (d_in + d_out)``. ``M`` starts at zero (the paper's
    init), so the adapted model starts equal to the base model; scaling is 1 (the paper has no alpha).

    Args:
        r: LoRA-equivalent rank that sizes ``M`` (paper: 8 to 256).
        mora_type: 1 = "sharing" (sum input chunks, tile output; the paper's choice for large r),
            6 = RoPE (rotate each input chunk by its position, apply ``M`` block-wise; for small r).
        rope_base: base of the RoPE angles for ``mora_type=6`` (10000, as in RoPE).
        target_modules / exclude_modules / layers_to_transform / layers_pattern / modules_to_save: as in LoRA.
        init_weights: True -> ``M = 0`` (identity adapter); False -> small random ``M`` (for tests).
    """

    r: int = field(default=8, metadata={"help": "LoRA-equivalent rank; M is r_hat x r_hat with r_hat^2 ~ r*(in+out)"})
    mora_type: int = field(
        default=6, metadata={"help": "compress/decompress operator: 1 = sharing (large r), 6 = RoPE (small r)"}
    )
    rope_base: float = field(default=10000.0, metadata={"help": "RoPE angle base for mora_type=6"})
    init_weights: bool = field(default=True, metadata={"help": "True: M = 0 so training starts at the base model"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.MORA
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r={self.r!r}: must be a positive int (the LoRA-equivalent rank), e.g. 8")
        if self.mora_type not in (1, 6):
            raise ValueError(f"mora_type={self.mora_type!r}: use 1 (sharing, large r) or 6 (RoPE, small r)")
        if self.target_parameters:
            raise ValueError("target_parameters: MoRA adapts nn.Linear modules only; use target_modules")
