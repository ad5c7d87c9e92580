"""DDP worker: ZOTrainer (MeZO-SGD, gradient accumulation 2) on 2 CPU processes (gloo), one accelerate launch.

Every rank records the micro-batches it trained on. Afterwards the flattened parameters of both ranks are compared
bit for bit, and against one process that replays the same steps with the ZO primitives: for each micro-batch
position the projected gradient of rank 0's and rank 1's micro-batch along the same seeded direction, averaged,
then one update per window -- what the all-reduced scalar should give.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from datasets import Dataset
from dist_common import check_world, flat_params, random_ids, tiny_llama, write_results
from torch.nn.parallel import DistributedDataParallel

from hf_effi.optim.param_groups import build_param_groups
from hf_effi.trainers.zo import ZOArguments, ZOTrainer
from hf_effi.trainers.zo_perturb import ZOOptimizer, spsa_projected_gradient

STEPS, GA, BATCH, LR, EPS = 3, 2, 2, 1e-2, 1e-3


class RecordingZOTrainer(ZOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(inputs["input_ids"].detach().clone())
        return super().training_step(model, inputs, num_items_in_batch)


def replay(windows: list[list[list[torch.Tensor]]]) -> torch.Tensor:
    """One process: windows[step][micro][rank] -> parameters after the ZO steps with rank-averaged scalars."""
    model = tiny_llama(seed=0)
    model.eval()
    # the trainer's parameter order (decay group, then no-decay group): it decides which seed each tensor gets
    opt = ZOOptimizer(build_param_groups(model, weight_decay=0.0), lr=LR, eps=EPS, seed=0)
    for window in windows:
        for per_rank in window:
            seed = opt.next_sample_seed()
            gs = [spsa_projected_gradient(lambda ids=ids: model(input_ids=ids, labels=ids).loss, opt._params(),
                                          opt.param_seeds(seed), EPS)[0] for ids in per_rank]
            mean = torch.tensor(gs, dtype=torch.float64).sum() / len(gs)
            opt.add_estimate(seed, mean.item())
        opt.step()
    return flat_params(model)


def main(out_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    ids = random_ids(48, seed=0)
    args = ZOArguments(output_dir=out_dir, max_steps=STEPS, per_device_train_batch_size=BATCH,
                       gradient_accumulation_steps=GA, learning_rate=LR, zo_eps=EPS, lr_scheduler_type="constant",
                       use_cpu=True, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
                       dataloader_num_workers=0, ddp_find_unused_parameters=False)
    trainer = RecordingZOTrainer(model=tiny_llama(seed=0), args=args,
                                 train_dataset=Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}))
    trainer.train()
    check_world(trainer.args.world_size, "ZO DDP worker")
    result = {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
        "multi_cpu": trainer.accelerator.distributed_type == DistributedType.MULTI_CPU,
        "ddp": isinstance(trainer.model_wrapped, DistributedDataParallel),
        "samples_drawn": trainer.zo_optimizer.samples_drawn,
        "grads": sum(p.grad is not None for p in trainer.model.parameters()),
    }
    flat = flat_params(trainer.model)
    every = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    result["identical"] = torch.equal(every[0], every[1])
    seen = torch.stack(trainer.seen)  # [micro, BATCH, SEQ]
    seen_all = [torch.empty_like(seen) for _ in range(dist.get_world_size())]
    dist.all_gather(seen_all, seen)
    result["ranks_saw_different_data"] = not torch.equal(seen_all[0], seen_all[1])
    windows = [[[seen_all[r][s * GA + m] for r in range(2)] for m in range(GA)] for s in range(STEPS)]
    reference = replay(windows)
    result["max_abs_diff_vs_replay"] = (flat - reference).abs().max().item()
    result["moved"] = (flat - flat_params(tiny_llama(seed=0))).abs().max().item()
    rank0_only = replay([[[w[0]] for w in window] for window in windows])
    result["diff_if_not_reduced"] = (rank0_only - reference).abs().max().item()
    write_results(out_path, result)
    dist.barrier()
    dist.destroy_process_group()  # joins gloo's threads: exiting without it can abort


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
