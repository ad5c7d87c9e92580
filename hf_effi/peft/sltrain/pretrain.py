"""SLTrain for pretraining from scratch: a transformers model whose block Linear layers hold only ``B``, ``A`` and
the values of a fixed-support sparse ``S`` (no dense weight), ``W = (lora_alpha / r) B A + S``.

Han et al., arXiv 2406.02214, Sec. 3 and the official ``SpLoRaLinear``: A kaiming-uniform, B zero, the values of
S uniform in ``±1/sqrt(d_in)`` (so training starts from a random sparse weight), biases kept as the model drew them.
Embeddings, norms and the LM head stay dense, as in the paper. ``densify_sltrain`` turns the model back into the
stock architecture (dense ``nn.Linear``), which saves and loads with plain ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import math

import torch
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from hf_effi.peft.sltrain.config import SLTrainConfig
from hf_effi.peft.sltrain.layer import random_support, sparse_plus_lowrank, support_seed

__all__ = ["SparseLowRankLinear", "densify_sltrain", "sltrain_model"]


class SparseLowRankLinear(nn.Module):
    """A Linear layer ``y = x W^T + b`` with ``W = scaling * B A + S`` and no dense weight.

    Parameters: ``lowrank_A`` [r, in], ``lowrank_B`` [out, r], ``sparse_values`` [nnz], ``bias`` [out] or None;
    buffer ``sparse_indices`` [nnz] (flat positions in the [out, in] weight, int32).
    """

    def __init__(self, in_features: int, out_features: int, *, r: int, lora_alpha: float, density: float, seed: int,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if r > min(in_features, out_features):
            raise ValueError(f"SLTrain: r={r} exceeds min(in_features, out_features)={min(in_features, out_features)}")
        self.in_features, self.out_features, self.r, self.scaling = in_features, out_features, r, lora_alpha / r
        indices = random_support(out_features, in_features, density, seed)
        self.register_buffer("sparse_indices", indices)
        self.lowrank_A = nn.Parameter(torch.empty(r, in_features))
        nn.init.kaiming_uniform_(self.lowrank_A, a=math.sqrt(5))
        self.lowrank_B = nn.Parameter(torch.zeros(out_features, r))
        bound = 1 / math.sqrt(in_features)
        self.sparse_values = nn.Parameter(torch.empty(indices.numel()).uniform_(-bound, bound))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense weight [out, in]."""
        return sparse_plus_lowrank(self.lowrank_A, self.lowrank_B, self.sparse_values, self.sparse_indices,
                                   self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(self.lowrank_A.dtype), self.dense_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"nnz={self.sparse_indices.numel()}, bias={self.bias is not None}")


def _is_block_linear(name: str, module: nn.Module, model: PreTrainedModel) -> bool:
    output = model.get_output_embeddings()
    return isinstance(module, nn.Linear) and module is not output


def sltrain_model(config: PretrainedConfig, sltrain_config: SLTrainConfig | None = None, *,
                  seed: int = 0) -> PreTrainedModel:
    """A freshly initialised ``AutoModelForCausalLM.from_config(config)`` whose Linear layers are SLTrain layers.

    Args:
        config: any causal-LM config (LlamaConfig, Qwen2Config, ...).
        sltrain_config: r, lora_alpha, density, init_seed and target_modules (None: every nn.Linear except the LM
            head). Defaults to ``SLTrainConfig()`` (r 128, alpha 32, density 0.03).
        seed: seed of the dense initialisation (embeddings, norms, biases) and of A and S's values; the global RNG
            is left unchanged.

    Returns the model in train mode; every parameter trains. Bad targets raise before anything is built.
    """
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"config must be a transformers PretrainedConfig, got {type(config).__name__}")
    sltrain_config = SLTrainConfig() if sltrain_config is None else sltrain_config
    if not isinstance(sltrain_config, SLTrainConfig):
        raise TypeError(f"sltrain_config must be an SLTrainConfig, got {type(sltrain_config).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        targets = []
        for name, module in model.named_modules():
            if sltrain_config.target_modules is None:
                hit = _is_block_linear(name, module, model)
            else:
                hit = bool(check_target_module_exists(sltrain_config, name)) if name else False
            if not hit:
                continue
            if not isinstance(module, nn.Linear):
                raise TypeError(f"sltrain_model: target module {name!r} is a {type(module).__name__}, but only "
                                f"nn.Linear is supported; fix target_modules")
            if sltrain_config.r > min(module.in_features, module.out_features):
                raise ValueError(f"sltrain_model: r={sltrain_config.r} exceeds min(in_features, out_features)="
                                 f"{min(module.in_features, module.out_features)} of {name!r}; pass a smaller r")
            targets.append(name)
        if not targets:
            raise ValueError(f"sltrain_model: target_modules={sltrain_config.target_modules!r} matched no nn.Linear "
                             f"of {type(model).__name__}; check the module names")
        for name in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            old = getattr(parent, child)
            new = SparseLowRankLinear(old.in_features, old.out_features, r=sltrain_config.r,
                                      lora_alpha=sltrain_config.lora_alpha, density=sltrain_config.density,
                                      seed=support_seed(sltrain_config.init_seed, name), bias=old.bias)
            setattr(parent, child, new.to(old.weight.dtype))
    return model.train()


@torch.no_grad()
def densify_sltrain(model: nn.Module) -> nn.Module:
    """Replace every ``SparseLowRankLinear`` of ``model`` (in place) by an ``nn.Linear`` holding its dense weight;
    returns ``model``, which then saves and loads as its stock architecture."""
    names = [n for n, m in model.named_modules() if isinstance(m, SparseLowRankLinear)]
    if not names:
        raise ValueError("densify_sltrain: the model has no SLTrain layer; pass a model from sltrain_model(...)")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        weight = layer.dense_weight()
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        dense.weight.copy_(weight)
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
        setattr(parent, child, dense)
    return model
