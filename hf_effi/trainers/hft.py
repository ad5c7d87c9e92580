"""``HFTTrainer``: Half Fine-Tuning (Hui et al., "HFT: Half Fine-Tuning for Large Language Models", arXiv 2404.18466).

Each round, a random half of the parameters is frozen and the other half trains; the frozen half keeps the
pre-trained knowledge (the paper's remedy for catastrophic forgetting). A round is one epoch by default, as in the
paper's SFT runs; ``hft_interval_steps=K`` redraws every K optimizer steps instead.

Granularity (the paper selects "at the category level" inside each transformer block; there is no official code,
so this is our reading, tested in ``tests/trainers/test_hft.py``):

- The unit is one weight matrix with its bias, i.e. one leaf module that owns parameters (``q_proj``, ``up_proj``,
  ``input_layernorm``, ...). Half means half of the units, not half of the elements.
- Inside every decoder block the units fall into three categories: attention (module path contains ``attn`` or
  ``attention``), feed-forward (``mlp``, ``ffn``, ``feed_forward``) and the rest (norms: any module whose class
  name contains ``Norm``, whatever its path says). Everything outside the
  blocks (embeddings, final norm, LM head; a tied embedding is one unit) is one more category.
- In each category exactly half of the units train (2 of Llama's 4 attention matrices, 1 of 2 norms). A category
  with an odd count trains ⌈n/2⌉ or ⌊n/2⌋ units; the rounding alternates over the odd categories, from a random
  start each round, so the model-wide number of trainable units is exactly half (⌊N/2⌋ or ⌈N/2⌉).

Frozen units hold no gradient and no optimizer state; a unit that trains again starts with fresh state (see
:mod:`hf_effi.trainers.layer_selection`, shared with LISA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.layer_selection import LayerSelectionTrainer
from hf_effi.trainers.lisa import find_decoder_layers

__all__ = ["HFTArguments", "HFTTrainer", "hft_categories"]

_ATTENTION = ("attn", "attention")
_FEED_FORWARD = ("mlp", "ffn", "feed_forward")


def _kind(path_inside_block: str, module: nn.Module) -> str:
    if "norm" in type(module).__name__.lower():  # before the path test: post_attention_layernorm is a norm
        return "other"
    parts = path_inside_block.lower().split(".")
    if any(key in part for part in parts for key in _ATTENTION):
        return "attention"
    if any(key in part for part in parts for key in _FEED_FORWARD):
        return "feed_forward"
    return "other"


def hft_categories(model: nn.Module) -> dict[str, list[str]]:
    """HFT's categories: ``"<block>/<kind>"`` (and ``"outside"``) -> unit names (leaf modules owning trainable
    parameters), in model order. A unit's parameters are ``<unit>.<param>`` in ``model.named_parameters()``."""
    prefix, layers = find_decoder_layers(model)
    seen: set[int] = set()
    categories: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        if not own:
            continue
        seen.update(id(p) for p in own)
        key = "outside"
        for i in range(len(layers)):
            block = f"{prefix}.{i}"
            if name.startswith(block + "."):
                key = f"{block}/{_kind(name[len(block) + 1:], module)}"
                break
        categories.setdefault(key, []).append(name)
    return categories


@dataclass
class HFTArguments(EffiTrainingArguments):
    """TrainingArguments for :class:`HFTTrainer`.

    Args:
        hft_interval_steps: optimizer steps per round (a new random half each round); 0 (default) means one round per
            epoch, as in the paper.
        hft_seed: seed of the draws; ``None`` uses ``seed``. Must be equal on every DDP rank.
    """

    hft_interval_steps: int = field(
        default=0, metadata={"help": "Optimizer steps per round (new random half each round); 0: one round per epoch."}
    )
    hft_seed: int | None = field(default=None, metadata={"help": "Seed of the draws; None uses `seed`."})

    def __post_init__(self):
        super().__post_init__()
        k = self.hft_interval_steps
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"hft_interval_steps={k!r} must be an int >= 0 (0: one round per epoch)")


class HFTTrainer(LayerSelectionTrainer):
    """Trains a random half of the weight matrices per round (see the module docstring); needs :class:`HFTArguments`."""

    def __init__(self, *args, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(training_args, HFTArguments):
            raise TypeError(f"HFTTrainer needs args=HFTArguments(...), got {type(training_args).__name__}")
        super().__init__(*args, **kwargs)

    def selection_groups(self, model: nn.Module) -> dict[str, list[str]]:
        self.categories = hft_categories(model)
        names = [n for n, _ in model.named_parameters()]
        groups = {}
        for units in self.categories.values():
            for unit in units:
                prefix = unit + "." if unit else ""
                groups[unit] = [n for n in names if n.startswith(prefix) and "." not in n[len(prefix):]]
        return groups

    def always_trainable(self, model: nn.Module) -> list[str]:
        return []

    def sample_active(self, group_names: list[str], generator: torch.Generator) -> list[str]:
        round_up = bool(torch.randint(0, 2, (1,), generator=generator).item())
        active: list[str] = []
        for units in self.categories.values():
            units = [u for u in units if u in group_names]
            k = len(units) // 2
            if len(units) % 2:
                k += int(round_up)
                round_up = not round_up  # alternate the rounding so the model-wide count stays exactly half
            order = torch.randperm(len(units), generator=generator)[:k].tolist()
            active += [units[i] for i in order]
        return active

    def interval_steps(self) -> int:
        return self.args.hft_interval_steps

    def selection_seed(self) -> int:
        return self.args.seed if self.args.hft_seed is None else self.args.hft_seed
