"""DDP worker: EffiTrainer with subspace optimizers on 2 CPU processes (gloo), one accelerate launch.

For ``galore_adamw`` (randomized range finder seeded per matrix) and ``apollo_mini`` (seeded Gaussian projection),
train 4 steps with the projection refreshed every 2 steps, then gather from every rank: the flattened parameters,
and a checksum of every optimizer-state tensor plus every seed. Replicas stay identical only if each rank drew
the same projections (seeded from the parameter name and refresh count, never from the global RNG, which the
worker deliberately desynchronises across ranks before training).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from dist_common import check_world, flat_params, gather_objects, random_ids, tiny_llama, write_results

import hf_effi.optim.subspace  # noqa: F401  (registers the names)
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

CASES = {
    "galore_adamw": {"rank": 4, "update_proj_gap": 2},
    "apollo_mini": {"update_proj_gap": 2},
}


def state_fingerprint(optimizer) -> list:
    """Per parameter, in order: sums of its state tensors and its integer entries (seeds, refresh counts)."""
    out = []
    for i, entry in sorted(optimizer.state_dict()["state"].items()):
        out.append([i] + [[k, v.double().sum().item() if torch.is_tensor(v) else v] for k, v in sorted(entry.items())])
    return out


def run_case(name: str, out_dir: str) -> dict:
    args = EffiTrainingArguments(
        output_dir=f"{out_dir}/{name}",
        effi_optim=name,
        effi_optim_args=CASES[name],
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=3e-3,
        weight_decay=0.1,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    ids = random_ids(32, seed=0)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    trainer = EffiTrainer(model=tiny_llama(seed=0), args=args, train_dataset=dataset)
    check_world(trainer.args.world_size, "subspace DDP worker")
    torch.manual_seed(1000 + dist.get_rank())  # a projection drawn from the global RNG would now differ per rank
    trainer.train()
    flat = flat_params(trainer.model)
    every = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    inner = trainer.optimizer.optimizer
    return {
        "world_size": trainer.args.world_size,
        "wrapped": type(trainer.model_wrapped).__name__,
        "optimizer": type(inner).__name__,
        "identical": all(torch.equal(every[0], f) for f in every[1:]),
        "moved": (flat - flat_params(tiny_llama(seed=0))).abs().max().item(),
        "fingerprints": gather_objects(state_fingerprint(inner)),
    }


def main(out_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    write_results(out_path, {name: run_case(name, out_dir) for name in CASES})
    dist.barrier()
    dist.destroy_process_group()  # joins gloo's threads: exiting without it can abort


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
