"""Pretrain a Llama-shaped model from scratch with any hf_effi optimizer and schedule chosen in YAML.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/pretrain.py \
        --config recipes/configs/pretrain_adamw.yaml [--effi_optim adafactor --max_steps 200 ...]

The default configs train the ~20M-parameter ``hf_effi.testing.pretrain_task()`` model on Python's own
documentation on CPU in minutes; ``model_shape: 60m`` trains the GaLore paper's 60M Llama shape instead. The same
script runs unchanged on GPUs and several processes (``recipes/accelerate/{gpu,multi_gpu,fsdp}.yaml``; under FSDP
the optimizer is built after wrapping, through ``EffiTrainer``). It writes the final model, the tokenizer, a model
card and ``results.json`` under ``output_dir``; checkpoints follow ``save_strategy``/``save_steps`` and a run resumes
with ``--resume_from_checkpoint PATH``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import StepTimer, parse_recipe_args
from transformers import LlamaForCausalLM

from hf_effi.cards import write_model_card
from hf_effi.testing import SMOLLM2_NAME, pretrain_task, shape_60m
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments
from hf_effi.utils import mean_loss, optimizer_state_bytes

__all__ = ["PretrainArguments", "main"]

MODEL_SHAPES = ("20m", "60m")


@dataclass
class PretrainArguments:
    """What is pretrained on which text; the optimizer, schedule and loop come from ``EffiTrainingArguments``."""

    model_shape: str = field(
        default="20m",
        metadata={
            "help": "20m: pretrain_task's ~20M Llama; 60m: the GaLore paper's 60M Llama shape (hidden 512, 8 "
            "layers), with the tokenizer's vocabulary."
        },
    )
    corpus: str = field(default="python_docs", metadata={"help": "python_docs or python_code (see hf_effi.data)."})
    seq_len: int = field(default=128, metadata={"help": "Tokens per training and evaluation row."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the training-document order."})
    max_eval_tokens: int = field(default=8192, metadata={"help": "Held-out tokens the final loss is measured on."})

    def __post_init__(self):
        if self.model_shape not in MODEL_SHAPES:
            raise ValueError(f"model_shape={self.model_shape!r} is not one of {MODEL_SHAPES}")


def build_model(shape: str, task, seed: int) -> torch.nn.Module:
    if shape == "20m":
        return task.make_model(seed=seed)
    config = shape_60m()
    config.vocab_size = len(task.tokenizer)
    config.bos_token_id, config.eos_token_id = task.tokenizer.bos_token_id, task.tokenizer.eos_token_id
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    pa, args = parse_recipe_args((PretrainArguments, EffiTrainingArguments), argv)
    if not torch.cuda.is_available() and not args.use_cpu:
        # Without it, `accelerate launch` with several CPU processes gives independent runs instead of DDP.
        args = dataclasses.replace(args, use_cpu=True)
    task = pretrain_task(seq_len=pa.seq_len, seed=pa.task_seed, corpus=pa.corpus, max_eval_tokens=pa.max_eval_tokens)
    model = build_model(pa.model_shape, task, args.seed)
    timer = StepTimer()
    trainer = EffiTrainer(
        model=model, args=args, train_dataset=task.train_dataset, processing_class=task.tokenizer, callbacks=[timer]
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    eval_loss = mean_loss(trainer.model, task.eval_dataset, batch_size=args.per_device_eval_batch_size)
    if not trainer.is_world_process_zero():
        return 0
    out = Path(args.output_dir)
    trainer.save_model(str(out))
    steps = trainer.state.global_step
    tokens = steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size * task.seq_len
    result = {
        "recipe": "pretrain",
        "model_shape": pa.model_shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "optimizer": args.effi_optim or str(args.optim),
        "optimizer_args": args.effi_optim_args,
        "schedule": args.effi_schedule or str(args.lr_scheduler_type),
        "schedule_args": args.effi_schedule_args,
        "steps": steps,
        "train_tokens": tokens,
        "eval_loss": eval_loss,
        "perplexity": float(torch.tensor(eval_loss).exp()),
        "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
        "median_step_seconds": timer.median_step_seconds() if timer.step_seconds else None,
        "world_size": args.world_size,
        "wall_seconds": time.perf_counter() - started,
    }
    write_model_card(
        out,
        base_model=None,
        method=result["optimizer"],
        summary=f"A {result['parameters'] / 1e6:.1f}M-parameter Llama pretrained from scratch for {steps} steps "
        f"({tokens:,} tokens) with {result['optimizer']} and the {result['schedule']} schedule by hf_effi's pretrain "
        "recipe.",
        settings={k: result[k] for k in ("optimizer", "optimizer_args", "schedule", "schedule_args")}
        | {
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "warmup_steps": args.warmup_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "processes": args.world_size,
            "seed": args.seed,
        },
        data={
            "dataset": f"hf_effi.testing.pretrain_task, corpus {pa.corpus!r}",
            "tokenizer": SMOLLM2_NAME,
            "seq_len": task.seq_len,
            "tokens": tokens,
        },
        metrics={
            "held-out loss": (eval_loss, "nats/token"),
            "held-out perplexity": result["perplexity"],
            "optimizer state": (result["optimizer_state_bytes"], "bytes"),
        },
        tags=["pretraining"],
    )
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(
        f"{result['optimizer']} / {result['schedule']}: held-out loss {eval_loss:.4f} after {steps} steps, "
        f"optimizer state {result['optimizer_state_bytes']:,} B; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
