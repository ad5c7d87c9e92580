"""Export a trained SoRA adapter as a plain peft LoRA adapter: the zero-gate ranks are dropped and the gate (and
the scaling) folded into B, so the result loads with stock peft, in a process that never imports hf_effi.

Ding et al., arXiv 2311.11696, Sec. 3.2: "we eliminate the parameter blocks corresponding to the zeroed-out ranks,
to reduce each SoRA module back to a concise yet rank-optimal LoRA".
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from hf_effi.peft.sora.layer import SoRALayer

__all__ = ["export_lora", "sora_to_lora_factors"]

_PEFT_PREFIX = "base_model.model."


def sora_to_lora_factors(layer: SoRALayer, adapter_name: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """``(A', B')`` with ``B' A' == scaling * B diag(g) A`` over the non-zero gate entries only.

    Shapes ``[k, in]`` and ``[out, k]`` with ``k`` the number of non-zero gates (possibly 0).
    """
    gate = layer.sora_gate[adapter_name].detach()
    keep = torch.nonzero(gate != 0).flatten()
    a = layer.sora_A[adapter_name].detach()[keep]
    b = layer.sora_B[adapter_name].detach()[:, keep] * (gate[keep] * layer.sora_scaling[adapter_name])
    return a.contiguous(), b.contiguous()


def export_lora(peft_model, out_dir: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` of a LoRA equal to the SoRA adapter.

    Each module keeps rank ``nnz(gate)`` (per-module ranks go to ``rank_pattern``; ``alpha == rank`` so LoRA's
    scaling is 1 and the SoRA scaling lives in B). Modules whose gate is all zero are left out. ``modules_to_save``
    entries are copied unchanged. Returns ``out_dir``. The LoRA output equals the SoRA output up to float rounding.
    """
    config = peft_model.peft_config.get(adapter_name) if hasattr(peft_model, "peft_config") else None
    if config is None or type(config).__name__ != "SoRAConfig":
        raise ValueError(f"export_lora: adapter_name={adapter_name!r} is not a SoRA adapter of this model; pass the "
                         f"PeftModel from get_peft_model(model, SoRAConfig(...)) and one of its SoRA adapter names")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, SoRALayer) or adapter_name not in module.sora_gate:
            continue
        if adapter_name in module.merged_adapters:
            raise ValueError(f"export_lora: adapter {adapter_name!r} is merged into {name!r}; call unmerge_adapter() "
                             f"first")
        a, b = sora_to_lora_factors(module, adapter_name)
        if a.shape[0] == 0:
            continue
        key = name.removeprefix(_PEFT_PREFIX)
        ranks[key] = a.shape[0]
        tensors[f"{_PEFT_PREFIX}{key}.lora_A.weight"] = a.clone()
        tensors[f"{_PEFT_PREFIX}{key}.lora_B.weight"] = b.clone()
    if not ranks:
        raise ValueError("export_lora: every SoRA gate is zero, so the adapter is the identity and there is nothing "
                         "to export; train with a smaller threshold xi")
    full_state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    for key, value in full_state.items():  # modules_to_save and other non-SoRA entries, unchanged
        if ".sora_" not in key:
            tensors[key] = value.detach().clone().contiguous()
    r = max(ranks.values())
    # Patterns are regexes matched against module names: escape the dots of the full module names.
    pattern = {re.escape(k): v for k, v in ranks.items() if v != r}
    lora = LoraConfig(r=r, lora_alpha=r, rank_pattern=pattern, alpha_pattern=dict(pattern),
                      target_modules=sorted(ranks), lora_dropout=0.0, bias="none", task_type=config.task_type,
                      base_model_name_or_path=config.base_model_name_or_path, revision=config.revision,
                      modules_to_save=config.modules_to_save, inference_mode=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out
