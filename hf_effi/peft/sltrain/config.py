"""Configuration of SLTrain (Han et al., "SLTrain: a sparse plus low-rank approach for parameter and memory
efficient pretraining", NeurIPS 2024, arXiv 2406.02214)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

__all__ = ["SLTrainConfig"]


@dataclass
class SLTrainConfig(PeftConfig):
    """Sparse plus low-rank weights: ``W = W0 + (lora_alpha / r) B A + S`` (fine-tuning) or ``W = (lora_alpha / r)
    B A + S`` (pretraining from scratch, ``hf_effi.peft.sltrain_model``), where S has a fixed random support of
    ``density * out * in`` entries (sampled uniformly without replacement, seeded) and only its values are trained.

    Defaults are the paper's (README / LLaMA-60M script): r 128, lora_alpha 32, density 0.03. The support of each
    layer is drawn from ``torch.Generator().manual_seed(crc32(f"{init_seed}:{module name}"))``, so it is the same on
    every run and differs between layers; it is also saved with the adapter (indices + values).

    Args:
        r: rank of the low-rank part B A.
        lora_alpha: scaling numerator; B A is scaled by lora_alpha / r.
        density: fraction of the weight's entries in the support of S (0 < density < 1).
        init_seed: seed of the random sparse supports.
        target_modules: module names (or a regex, or "all-linear") to adapt; None uses LoRA's default per architecture
            (from scratch: every nn.Linear in the blocks).
        exclude_modules: module names (or a regex) not to adapt.
        layers_to_transform: only adapt these layer indices.
        layers_pattern: the name of the layer list, used with layers_to_transform.
        modules_to_save: extra modules trained in full and saved with the adapter.
        init_weights: True starts fine-tuning at the base model (B = 0, S = 0); False draws B and S at random (tests).
        bias: only "none" is supported.
    """

    r: int = field(default=128, metadata={"help": "rank of the low-rank part B A"})
    lora_alpha: float = field(default=32.0, metadata={"help": "scaling numerator; B A is scaled by lora_alpha / r"})
    density: float = field(default=0.03, metadata={"help": "fraction of the weight's entries in the support of S"})
    init_seed: int = field(default=0, metadata={"help": "seed of the random sparse supports"})
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
        default=True, metadata={"help": "True: start at the base model (B = 0, S = 0); False: random B and S"}
    )
    bias: str = field(default="none", metadata={"help": "only 'none' is supported"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from peft.utils import PeftType

        self.peft_type = PeftType["SLTRAIN"]
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"SLTrainConfig: r={self.r!r} must be a positive int, e.g. r=128")
        if not isinstance(self.density, (int, float)) or not 0 < self.density < 1:
            raise ValueError(f"SLTrainConfig: density={self.density!r} must be in (0, 1), e.g. density=0.03")
        if self.bias != "none":
            raise ValueError(f"SLTrainConfig: bias={self.bias!r} is not supported; use bias='none'")
        if self.target_parameters:
            raise ValueError("SLTrainConfig: target_parameters is not supported; adapt nn.Linear via target_modules")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("SLTrainConfig: layers_pattern needs layers_to_transform; pass both or neither")
