"""Configuration of SoRA (Ding et al., "Sparse Low-rank Adaptation of Pre-trained Language Models", EMNLP 2023,
arXiv 2311.11696)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hf_effi.peft._base import NoBiasDeltaConfig

__all__ = ["SoRAConfig"]


@dataclass
class SoRAConfig(NoBiasDeltaConfig):
    """LoRA with a trainable gate between A and B: ``delta_y = ((x A^T) * g) B^T * lora_alpha / r``.

    The gate ``g`` is made sparse during training by a proximal (soft-threshold) step after each optimizer step
    (``hf_effi.peft.SoRACallback`` or ``sora_proximal_step``); afterwards ``export_lora`` drops the zeroed ranks and
    writes a plain peft LoRA adapter. Defaults follow the official code (TsinghuaC3I/SoRA: r_max 8, alpha 16, A
    kaiming, B zeros, gate drawn from N(0, 1)).

    Args:
        r: the maximal rank r_max of each adapter (the gate has r entries); the sparsity step prunes ranks from it.
        lora_alpha: scaling numerator; the update is scaled by lora_alpha / r (fixed, not changed by pruning).
        gate_init: "normal" draws the gate from N(0, 1) as the official code does; "ones" starts it at 1.
        target_modules: module names (or a regex, or "all-linear") to adapt; None uses LoRA's default per architecture.
        exclude_modules: module names (or a regex) not to adapt.
        layers_to_transform: only adapt these layer indices.
        layers_pattern: the name of the layer list, used with layers_to_transform.
        modules_to_save: extra modules trained in full and saved with the adapter.
        init_weights: True makes B zero so the adapter starts as the identity; False draws B at random (tests).
        bias: only "none" is supported.
    """

    r: int = field(default=8, metadata={"help": "the maximal rank r_max of each adapter (the gate has r entries)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "scaling numerator; the update is scaled by lora_alpha / r"})
    gate_init: Literal["normal", "ones"] = field(
        default="normal", metadata={"help": "'normal' draws the gate from N(0, 1) (official code); 'ones' starts it at 1"}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: B is zero so the adapter starts as the identity; False: random B"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from peft.utils import PeftType

        self.peft_type = PeftType["SORA"]
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"SoRAConfig: r={self.r!r} must be a positive int (the maximal rank), e.g. r=8")
        if self.gate_init not in ("normal", "ones"):
            raise ValueError(f"SoRAConfig: gate_init={self.gate_init!r} must be 'normal' or 'ones'")
        self.check_targeting("nn.Linear modules")
