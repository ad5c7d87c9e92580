"""Configuration of SoRA (Ding et al., "Sparse Low-rank Adaptation of Pre-trained Language Models", EMNLP 2023,
arXiv 2311.11696)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

__all__ = ["SoRAConfig"]


@dataclass
class SoRAConfig(PeftConfig):
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
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "module names, a regex or 'all-linear'; None: LoRA's default per architecture"}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "module names (or a regex) not to adapt"}
    )
    target_parameters: Optional[list[str]] = field(default=None, metadata={"help": "unsupported; must stay None"})
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "only adapt these layer indices"}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "the name of the layer list, used with layers_to_transform"}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "extra modules trained in full and saved with the adapter"}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: B is zero so the adapter starts as the identity; False: random B"}
    )
    bias: str = field(default="none", metadata={"help": "only 'none' is supported"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from peft.utils import PeftType

        self.peft_type = PeftType["SORA"]
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"SoRAConfig: r={self.r!r} must be a positive int (the maximal rank), e.g. r=8")
        if self.gate_init not in ("normal", "ones"):
            raise ValueError(f"SoRAConfig: gate_init={self.gate_init!r} must be 'normal' or 'ones'")
        if self.bias != "none":
            raise ValueError(f"SoRAConfig: bias={self.bias!r} is not supported; use bias='none'")
        if self.target_parameters:
            raise ValueError("SoRAConfig: target_parameters is not supported; adapt nn.Linear modules via target_modules")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("SoRAConfig: layers_pattern needs layers_to_transform; pass both or neither")
