"""DDP worker: InfoBatchTrainer on 2 CPU processes (gloo), one accelerate launch.

Run as ``accelerate launch --multi_gpu --num_processes 2 ... infobatch_ddp.py <out.json> <output dir>``.
32 rows, per-device batch 2, accumulation 2 (global batch 8), 4 epochs, delta 0.75: epochs of 32, 24, 24, 32 rows.
Every process records the dataset indices of every micro-batch it trained on, by epoch; rank 0 writes what both
processes saw, their scores, their parameter checksums and the step counts.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import torch
import torch.distributed as dist
from datasets import Dataset
from dist_common import check_world, flat_params, gather_objects, random_ids, tiny_llama, write_results

from hf_effi.trainers.infobatch import INDEX_KEY, InfoBatchArguments, InfoBatchTrainer


class RecordingInfoBatchTrainer(InfoBatchTrainer):
    """Keeps, per epoch, the dataset indices this process trained on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: dict[int, list[int]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if INDEX_KEY in inputs:
            self.seen[self.infobatch_sampler.epoch] += inputs[INDEX_KEY].tolist()
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main(out_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    ids = random_ids(32, seed=0)
    ids[:16] = torch.arange(ids.shape[1]) % 4  # easy rows beside random ones: a real loss spread
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = InfoBatchArguments(
        output_dir=out_dir, num_train_epochs=4, infobatch_delta=0.75, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, learning_rate=1e-2, effi_optim="adamw", effi_schedule="cosine",
        use_cpu=True, save_strategy="no", report_to="none", seed=0, logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
    )  # fmt: skip
    trainer = RecordingInfoBatchTrainer(model=tiny_llama(seed=0), args=args, train_dataset=dataset)
    trainer.train()
    check_world(trainer.args.world_size, "InfoBatch DDP worker")
    flat = flat_params(trainer.model)
    mine = {
        "seen": {str(e): v for e, v in trainer.seen.items()},
        "scores": trainer.infobatch_sampler.scores.tolist(),
        "checksum": flat.double().sum().item(),
        "history": trainer.infobatch_sampler.history,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "scheduler_steps": trainer.lr_scheduler.last_epoch,
        "final_lr": trainer.lr_scheduler.get_last_lr()[0],
        "samples_trained": trainer.infobatch_samples_trained,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
    }
    write_results(out_path, {"ranks": gather_objects(mine)})
    dist.barrier()
    dist.destroy_process_group()  # joins gloo's threads: exiting without it can abort


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
