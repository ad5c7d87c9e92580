"""``LISATrainer``: Layerwise Importance Sampled AdamW (Pan et al., "LISA: Layerwise Importance Sampling for
Memory-Efficient Large Language Model Fine-Tuning", arXiv 2403.17919), memory-correct.

Every ``lisa_interval_steps`` optimizer steps (K), ``lisa_activated_layers`` decoder layers (γ) are drawn uniformly
without replacement and trained; the other decoder layers are frozen (Alg. 1). As in the paper the embeddings, the
final norm and the LM head train at every step (``lisa_embeddings_and_head="train"``); ``"freeze"`` keeps them frozen
for the whole run, which is what brings memory down to LoRA's on small models whose embeddings dominate.

Unlike the reference callback, a frozen layer holds no gradient and no optimizer state (freed at the switch,
recreated fresh on reactivation), the optimizer contains every layer from the start, and the draw is resumable
(see :mod:`hf_effi.trainers.layer_selection`). Gradient + optimizer-state bytes are therefore
``trainable_parameter_count(model) * bytes per parameter`` at every step (tied embeddings counted once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.layer_selection import LayerSelectionTrainer

__all__ = ["EMBEDDING_POLICIES", "LISAArguments", "LISATrainer", "find_decoder_layers"]

EMBEDDING_POLICIES = ("train", "freeze")


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder-layer list of a causal LM, found generically: the ``nn.ModuleList`` whose length is
    ``config.num_hidden_layers`` (the largest list of identical blocks when the config does not say).

    Returns ``(qualified name, the list)``; raises ``ValueError`` naming the model class when there is none.
    """
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            same_kind = len({type(m) for m in module}) == 1
            if same_kind and any(True for _ in module[0].parameters()):
                candidates.append((name, module))
    if n_layers is not None:
        exact = [c for c in candidates if len(c[1]) == n_layers]
        if exact:
            return exact[0]
    if not candidates:
        raise ValueError(f"found no decoder-layer list (an nn.ModuleList of identical blocks) in "
                         f"{type(model).__name__}; LISA needs a transformer with stacked layers")
    return max(candidates, key=lambda c: len(c[1]))


@dataclass
class LISAArguments(EffiTrainingArguments):
    """TrainingArguments for :class:`LISATrainer`.

    Args:
        lisa_activated_layers: γ, decoder layers trained at a time (paper/LMFlow: 1-2; LLaMA-Factory: 3).
        lisa_interval_steps: K, optimizer steps between draws (LMFlow: 20).
        lisa_embeddings_and_head: ``"train"`` (the paper: embeddings, final norm and LM head always train) or
            ``"freeze"`` (they never train; memory close to LoRA's).
        lisa_seed: seed of the layer draws; ``None`` uses ``seed``. Must be equal on every DDP rank.
    """

    lisa_activated_layers: int = field(default=2, metadata={"help": "Decoder layers trained at a time (gamma)."})
    lisa_interval_steps: int = field(default=20, metadata={"help": "Optimizer steps between layer draws (K)."})
    lisa_embeddings_and_head: str = field(
        default="train",
        metadata={"help": "'train' (paper: embeddings, final norm, LM head always train) or 'freeze' (never)."},
    )
    lisa_seed: int | None = field(default=None, metadata={"help": "Seed of the layer draws; None uses `seed`."})

    def __post_init__(self):
        super().__post_init__()
        gamma = self.lisa_activated_layers
        if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
            raise ValueError(f"lisa_activated_layers={gamma!r} must be a positive int (the paper uses 1 or 2)")
        k = self.lisa_interval_steps
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"lisa_interval_steps={k!r} must be a positive int (LMFlow uses 20)")
        if self.lisa_embeddings_and_head not in EMBEDDING_POLICIES:
            raise ValueError(f"lisa_embeddings_and_head={self.lisa_embeddings_and_head!r} must be one of "
                             f"{list(EMBEDDING_POLICIES)}")


class LISATrainer(LayerSelectionTrainer):
    """Trains γ randomly drawn decoder layers at a time, redrawn every K steps; needs :class:`LISAArguments`.

    Works with any optimizer hf_effi builds (``effi_optim``) or transformers' ``optim``, except schedule-free ones.
    """

    def __init__(self, *args, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(training_args, LISAArguments):
            raise TypeError(f"LISATrainer needs args=LISAArguments(...), got {type(training_args).__name__}")
        super().__init__(*args, **kwargs)

    def _layers(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        return find_decoder_layers(model)

    def selection_groups(self, model: nn.Module) -> dict[str, list[str]]:
        prefix, layers = self._layers(model)
        gamma = self.args.lisa_activated_layers
        if gamma > len(layers):
            raise ValueError(f"lisa_activated_layers={gamma} is larger than the {len(layers)} decoder layers of "
                             f"{type(model).__name__}; use at most {len(layers)}")
        names = [n for n, _ in model.named_parameters()]
        return {f"{prefix}.{i}": [n for n in names if n.startswith(f"{prefix}.{i}.")] for i in range(len(layers))}

    def always_trainable(self, model: nn.Module) -> list[str]:
        if self.args.lisa_embeddings_and_head == "freeze":
            return []
        prefix, _ = self._layers(model)
        return [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(prefix + ".")]

    def sample_active(self, group_names: list[str], generator: torch.Generator) -> list[str]:
        order = torch.randperm(len(group_names), generator=generator)
        return [group_names[i] for i in order[: self.args.lisa_activated_layers].tolist()]

    def interval_steps(self) -> int:
        return self.args.lisa_interval_steps

    def selection_seed(self) -> int:
        return self.args.seed if self.args.lisa_seed is None else self.args.lisa_seed
