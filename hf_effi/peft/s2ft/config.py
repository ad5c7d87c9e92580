"""Configuration of S²FT (Yang et al., "S²FT: Efficient, Scalable and Generalizable LLM Fine-tuning by Structured
Sparsity", NeurIPS 2024, arXiv 2412.06289)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from hf_effi.peft._base import NoBiasDeltaConfig

__all__ = ["S2FTConfig"]

_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj", "query_key_value", "dense"]
_ROWS = ["q_proj", "k_proj", "v_proj", "up_proj", "gate_proj", "query_key_value", "dense_h_to_4h"]


@dataclass
class S2FTConfig(NoBiasDeltaConfig):
    """Structured sparse fine-tuning: train a few attention heads and FFN channels of each targeted Linear as one
    dense slice of its weight.

    A module whose name is in ``row_modules`` trains the output rows of the selected units (v_proj, up_proj: the
    heads / channels it produces); any other targeted module trains the input columns of the selected units (o_proj,
    down_proj: the heads / channels it reads). A unit is one head (``head_dim`` rows/columns) for modules in
    ``attention_modules`` and one channel otherwise. The update is stored as a delta slice ``D`` initialised to zero,
    so ``W[:, idx] + D`` is trained exactly as the paper's in-place update of ``W[:, idx]`` (same gradients, same
    optimizer steps, without weight decay) and can be merged, unmerged and switched like any adapter.

    Selection (random, as in the paper): each targeted module draws ``max(1, round(ratio * units))`` units uniformly
    without replacement from ``torch.Generator().manual_seed(crc32(f"{selection_seed}:{module name}"))``. The paper's
    code samples the same fraction from the pool of all layers at once; drawing it per module keeps the count (and the
    trainable-parameter budget) fixed per layer with the same expected selection. Defaults follow the paper's LLaMA
    commonsense script: o_proj with 5.2% of heads and down_proj with 2% of channels (``o_ratio 0.052, d_ratio 0.02``).

    Args:
        head_ratio: fraction of heads trained in each attention module (0 < ratio <= 1).
        channel_ratio: fraction of channels trained in each other (FFN) module (0 < ratio <= 1).
        head_dim: rows/columns per head; None reads config.head_dim or hidden_size // num_attention_heads.
        attention_modules: module names whose units are heads.
        row_modules: module names trained on output rows (all other targets train input columns).
        selection_seed: seed of the random selection.
        target_modules: module names (or a regex) to adapt; None: o_proj and down_proj (gpt_neox: dense, dense_4h_to_h).
        exclude_modules: module names (or a regex) not to adapt.
        layers_to_transform: only adapt these layer indices.
        layers_pattern: the name of the layer list, used with layers_to_transform.
        modules_to_save: extra modules trained in full and saved with the adapter.
        init_weights: True starts the deltas at zero (the base model); False draws them at random (tests).
        bias: only "none" is supported.
    """

    head_ratio: float = field(default=0.052, metadata={"help": "fraction of heads trained in each attention module"})
    channel_ratio: float = field(default=0.02, metadata={"help": "fraction of channels trained in each FFN module"})
    head_dim: Optional[int] = field(
        default=None, metadata={"help": "rows/columns per head; None: config.head_dim or hidden_size // heads"}
    )
    attention_modules: list[str] = field(
        default_factory=lambda: list(_ATTENTION), metadata={"help": "module names whose units are heads"}
    )
    row_modules: list[str] = field(
        default_factory=lambda: list(_ROWS), metadata={"help": "module names trained on output rows"}
    )
    selection_seed: int = field(default=0, metadata={"help": "seed of the random selection"})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "module names or a regex; None: o_proj and down_proj"}
    )
    init_weights: bool = field(default=True, metadata={"help": "True: deltas start at zero; False: random (tests)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from peft.utils import PeftType

        self.peft_type = PeftType["S2FT"]
        for name in ("head_ratio", "channel_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"S2FTConfig: {name}={value!r} must be in (0, 1], e.g. {name}=0.05")
        if self.head_dim is not None and (isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int)
                                          or self.head_dim < 1):
            raise ValueError(f"S2FTConfig: head_dim={self.head_dim!r} must be None or a positive int")
        self.attention_modules = list(self.attention_modules)
        self.row_modules = list(self.row_modules)
        self.check_targeting()
