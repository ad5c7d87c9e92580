"""DDP worker: EffiTrainer and Trainer's optimizer-factory protocol on 2 CPU processes (gloo).

Run as ``accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no
--main_process_port <port> ddp_effi_trainer.py <out.json> <output dir>``; ``TrainingArguments(use_cpu=True)`` makes
accelerate choose MULTI_CPU (without it the two processes would train independently).

Cases, one launch:

1. ``effi_trainer``: EffiTrainer with ``effi_optim="adamw"``, ``effi_schedule="wsd"`` and gradient accumulation 2.
   Every rank records the micro-batches Trainer fed it; afterwards the flattened parameters of both ranks are
   compared bit for bit, and against one process that steps AdamW + WSD on each window's micro-batches from both
   ranks concatenated, with the same clipping: what DDP + token-averaged loss computes.
2. ``factory``: plain Trainer with ``optimizer_cls_and_kwargs=hf_effi.make_cls_and_kwargs("adamw", ...)``.
3. ``layerwise``: ``effi_optim_args={"layerwise": True}`` must be refused with a clear error under 2 processes.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from datasets import Dataset
from dist_common import check_world, flat_params, gather_objects, random_ids, tiny_llama, write_results
from torch.nn.parallel import DistributedDataParallel
from transformers import Trainer, TrainingArguments

import hf_effi
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

STEPS = 4
GA = 2
BATCH = 2  # per device
WARMUP = 1
LR = 1e-2
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
COMMON = dict(
    max_steps=STEPS,
    per_device_train_batch_size=BATCH,
    gradient_accumulation_steps=GA,
    learning_rate=LR,
    weight_decay=WEIGHT_DECAY,
    max_grad_norm=MAX_GRAD_NORM,
    warmup_steps=WARMUP,
    use_cpu=True,
    save_strategy="no",
    report_to="none",
    seed=0,
    logging_steps=1,
    disable_tqdm=True,
    dataloader_num_workers=0,
    ddp_find_unused_parameters=False,
)


def dataset() -> Dataset:
    ids = random_ids(48, seed=0)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


class RecordingEffiTrainer(EffiTrainer):
    """EffiTrainer that keeps the ``input_ids`` of every micro-batch it trains on, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(inputs["input_ids"].detach().clone())
        return super().training_step(model, inputs, num_items_in_batch)


def describe_run(trainer: Trainer) -> dict:
    """What the launch really started; the worker refuses to go on unless it is 2 DDP processes."""
    info = {
        "world_size": trainer.args.world_size,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "wrapped": type(trainer.model_wrapped).__name__,
    }
    check_world(trainer.args.world_size, "accelerate launch DDP worker")
    if trainer.accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise SystemExit(f"expected MULTI_CPU, got {info['distributed_type']}: is use_cpu=True set?")
    if not isinstance(trainer.model_wrapped, DistributedDataParallel):
        raise SystemExit(f"expected the model wrapped in DistributedDataParallel, got {info['wrapped']}")
    return info


def replicas_identical(model: torch.nn.Module) -> tuple[bool, list[float], torch.Tensor]:
    """Gather every rank's flattened parameters; exact equality, each rank's checksum, and rank 0's vector."""
    flat = flat_params(model)
    every = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    return all(torch.equal(every[0], f) for f in every[1:]), [f.double().sum().item() for f in every], every[0]


def single_process_reference(windows: list[list[torch.Tensor]], *, concatenate: bool) -> tuple[torch.Tensor, list]:
    """AdamW + WSD from hf_effi.make in one process, one window of micro-batches per step, clipped like Trainer.

    ``concatenate=True`` steps on each window's micro-batches as one batch (mean loss); ``False`` accumulates the
    gradient of each micro-batch's mean loss divided by their number: the same sum rounded in another order, so
    the gap between the two is the float32 noise floor a distributed run is judged against.
    Returns the final flattened parameters and the learning rate each step used.
    """
    model = tiny_llama(seed=0)
    optimizer, scheduler = hf_effi.make(
        "adamw", model, lr=LR, weight_decay=WEIGHT_DECAY, num_training_steps=STEPS, schedule="wsd", warmup=WARMUP
    )
    lrs = []
    for window in windows:
        parts = [torch.cat(window)] if concatenate else window
        for ids in parts:
            (model(input_ids=ids, labels=ids).loss / len(parts)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return flat_params(model), lrs


def case_effi_trainer(out_dir: str) -> dict:
    args = EffiTrainingArguments(output_dir=out_dir, effi_optim="adamw", effi_schedule="wsd", **COMMON)
    trainer = RecordingEffiTrainer(model=tiny_llama(seed=0), args=args, train_dataset=dataset())
    trainer.train()
    result = describe_run(trainer)
    result["optimizer"] = type(trainer.optimizer.optimizer).__name__
    result["scheduler"] = type(trainer.lr_scheduler).__name__
    result["identical"], result["checksums"], flat = replicas_identical(trainer.model)

    # Micro-batches of every rank, [rank, micro-batch, BATCH, SEQ_LEN]; a window is GA micro-batches of each rank.
    seen = torch.stack(trainer.seen)
    every = [torch.empty_like(seen) for _ in range(dist.get_world_size())]
    dist.all_gather(every, seen)
    seen_all = torch.stack(every)
    result["micro_batches_per_rank"] = seen.shape[0]
    result["ranks_saw_different_data"] = not torch.equal(seen_all[0], seen_all[1])
    windows = [list(seen_all[:, s * GA : (s + 1) * GA].reshape(-1, BATCH, seen.shape[-1])) for s in range(STEPS)]
    ref, ref_lrs = single_process_reference(windows, concatenate=True)
    accumulated, _ = single_process_reference(windows, concatenate=False)
    result["max_abs_diff_vs_single_process"] = (flat - ref).abs().max().item()
    result["noise_floor"] = (accumulated - ref).abs().max().item()
    result["moved"] = (ref - flat_params(tiny_llama(seed=0))).abs().max().item()
    # Trainer logs the rate each optimizer step used, as the reference records it.
    result["lrs"] = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    result["reference_lrs"] = ref_lrs
    return result


def case_factory(out_dir: str) -> dict:
    args = TrainingArguments(output_dir=out_dir, **{**COMMON, "max_steps": 2})
    trainer = Trainer(
        model=tiny_llama(seed=0),
        args=args,
        train_dataset=dataset(),
        optimizer_cls_and_kwargs=hf_effi.make_cls_and_kwargs("adamw", lr=LR, weight_decay=WEIGHT_DECAY),
    )
    trainer.train()
    result = describe_run(trainer)
    inner = trainer.optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps the one the factory built
    result["optimizer"] = type(inner).__name__
    result["roles"] = [g.get("effi_role") for g in inner.param_groups]
    result["weight_decays"] = [g["weight_decay"] for g in inner.param_groups]
    result["identical"], result["checksums"], _ = replicas_identical(trainer.model)
    return result


def case_layerwise(out_dir: str) -> dict:
    args = EffiTrainingArguments(
        output_dir=out_dir, effi_optim="adamw", effi_optim_args={"layerwise": True}, **{**COMMON, "max_steps": 1}
    )
    result = {"effi_optim_args": args.effi_optim_args, "phase": "construct", "error_type": None, "error": None}
    try:
        trainer = EffiTrainer(model=tiny_llama(seed=0), args=args, train_dataset=dataset())
        result["phase"] = "train"
        trainer.train()
        result["phase"] = "finished"
    except (ValueError, RuntimeError) as e:
        result["error_type"], result["error"] = type(e).__name__, str(e)
        result["raised_from"] = _innermost_function(e)
    return result


def _innermost_function(error: Exception) -> str:
    """``module.function`` where ``error`` was raised."""
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_globals.get('__name__')}.{tb.tb_frame.f_code.co_name}"


def main(out_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    results = {
        "effi_trainer": case_effi_trainer(out_dir),
        "factory": case_factory(out_dir),
        "layerwise": gather_objects(case_layerwise(out_dir)),
    }
    write_results(out_path, results)
    dist.barrier()
    dist.destroy_process_group()  # joins gloo's threads: exiting without it can abort


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
