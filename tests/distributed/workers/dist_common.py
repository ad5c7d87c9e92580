"""Shared by the distributed worker scripts: the tiny model, its batches, and the checks every worker makes.

Workers run as scripts under ``torchrun`` / ``accelerate launch``, so this file is imported by its bare name
(the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 64
SEQ_LEN = 8
EXPECTED_WORLD_SIZE = 2


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama (GQA: 4 query heads, 2 key/value heads), the same weights for the same seed."""
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def random_ids(rows: int, seed: int) -> torch.Tensor:
    """``[rows, SEQ_LEN]`` token ids from an explicit generator (the global RNG is left alone)."""
    return torch.randint(0, VOCAB, (rows, SEQ_LEN), generator=torch.Generator().manual_seed(seed))


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter of a plain (unsharded) model, flattened in ``named_parameters`` order, as fp32."""
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def check_world(world_size: int, what: str) -> None:
    """Fail loudly when a launcher silently started one process instead of two."""
    if world_size != EXPECTED_WORLD_SIZE:
        raise SystemExit(
            f"{what}: world size is {world_size}, expected {EXPECTED_WORLD_SIZE}; the launcher did not start "
            f"{EXPECTED_WORLD_SIZE} connected processes (some accelerate flags, e.g. --cpu, silently start one)"
        )


def gather_objects(obj) -> list:
    """``obj`` from every rank, in rank order."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def write_results(path: str, results: dict) -> None:
    """Rank 0 writes the JSON the test reads; written to a side file first so a crash never leaves half a file."""
    if dist.get_rank() != 0:
        return
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
