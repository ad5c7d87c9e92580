"""Configuration of SLTrain (Han et al., "SLTrain: a sparse plus low-rank approach for parameter and memory
efficient pretraining", NeurIPS 2024, arXiv 2406.02214)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_effi.peft._base import NoBiasDeltaConfig

__all__ = ["SLTrainConfig"]


@dataclass
class SLTrainConfig(NoBiasDeltaConfig):
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
    init_weights: bool = field(
        default=True, metadata={"help": "True: start at the base model (B = 0, S = 0); False: random B and S"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from peft.utils import PeftType

        self.peft_type = PeftType["SLTRAIN"]
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"SLTrainConfig: r={self.r!r} must be a positive int, e.g. r=128")
        if not isinstance(self.density, (int, float)) or not 0 < self.density < 1:
            raise ValueError(f"SLTrainConfig: density={self.density!r} must be in (0, 1), e.g. density=0.03")
        self.check_targeting()
