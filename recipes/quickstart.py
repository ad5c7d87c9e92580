"""Quickstart: AdamW against hf_effi's memory-efficient optimizers, same model, data, seed and schedule.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/quickstart.py \
        --config recipes/configs/quickstart.yaml [--max_steps 20 ...]

Each optimizer in ``optimizers`` trains the ``hf_effi.testing.pretrain_task()`` model (a ~20M-parameter Llama on
Python's own documentation) from the same initial weights, through ``EffiTrainer``. Each run is measured the same
way: held-out loss and perplexity, bytes of optimizer state, median step time. The script prints a table and writes,
under ``output_dir``: ``<optimizer>/`` (final model, tokenizer and model card), ``loss_curves.png`` and
``results.json``.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import StepTimer, parse_recipe_args
from quickstart_report import comparison_markdown, format_table, write_loss_plot

from hf_effi.cards import write_model_card
from hf_effi.optim import OPTIMIZERS
from hf_effi.testing import SMOLLM2_NAME, pretrain_task
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments
from hf_effi.utils import mean_loss, optimizer_state_bytes

__all__ = ["QuickstartArguments", "main", "train_one"]


@dataclass
class QuickstartArguments:
    """What the quickstart compares; the training loop itself is configured by ``EffiTrainingArguments``."""

    optimizers: list[str] = field(
        default_factory=lambda: ["adamw", "galore_adamw", "apollo_mini"],
        metadata={"help": "hf_effi optimizer names to compare (see `hf-effi available`); the first 'adamw' is the "
                          "baseline of the ratio column, or the first name when adamw is absent."},
    )
    optimizer_settings: dict | str | None = field(
        default=None,
        metadata={"help": "Per-optimizer overrides, {name: {learning_rate: ..., <optimizer argument>: ...}}, as a "
                          "YAML mapping or a JSON string; learning_rate replaces the shared one for that run."},
    )
    seq_len: int = field(default=128, metadata={"help": "Tokens per training and evaluation row."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the training-document order of pretrain_task."})
    max_eval_tokens: int = field(default=8192, metadata={"help": "Held-out tokens the loss is measured on."})

    def __post_init__(self):
        if not self.optimizers:
            raise ValueError("optimizers is empty; name at least one, e.g. --optimizers adamw adafactor")
        self.optimizers = [OPTIMIZERS.get(name).name for name in self.optimizers]  # unknown names list valid ones
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"optimizers={self.optimizers} repeats a name; each optimizer runs once")
        settings = self.optimizer_settings or {}
        if isinstance(settings, str):
            try:
                settings = json.loads(settings)
            except json.JSONDecodeError as err:
                raise ValueError(f"optimizer_settings={settings!r} is not JSON ({err.msg}); write e.g. "
                                 '\'{"adafactor": {"learning_rate": 0.05}}\'') from None
        if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
            raise ValueError(f"optimizer_settings must map an optimizer name to a dict, got {settings!r}")
        extra = sorted(set(settings) - set(self.optimizers))
        if extra:
            raise ValueError(f"optimizer_settings names {extra}, which are not in optimizers={self.optimizers}")
        self.optimizer_settings = settings


def train_one(
    name: str, qs: QuickstartArguments, base_args: EffiTrainingArguments, task
) -> tuple[dict[str, Any], bool]:
    """Train, evaluate and save one run of ``name``; returns its measurements and whether this is the main process."""
    overrides = dict(qs.optimizer_settings.get(name, {}))
    lr = float(overrides.pop("learning_rate", base_args.learning_rate))
    run_dir = Path(base_args.output_dir) / name
    args = dataclasses.replace(base_args, effi_optim=name, effi_optim_args=overrides, learning_rate=lr,
                               output_dir=str(run_dir))
    model = task.make_model(seed=args.seed)  # the same initial weights for every optimizer
    parameters = sum(p.numel() for p in model.parameters())
    timer = StepTimer()
    trainer = EffiTrainer(model=model, args=args, train_dataset=task.train_dataset, processing_class=task.tokenizer,
                          callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    state_bytes = optimizer_state_bytes(trainer.optimizer)
    start = time.perf_counter()
    eval_loss = mean_loss(trainer.model, task.eval_dataset, batch_size=args.per_device_eval_batch_size)
    eval_seconds = time.perf_counter() - start
    trainer.save_model(str(run_dir))
    curve = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    result = {
        "optimizer": name,
        "learning_rate": lr,
        "optimizer_args": overrides,
        "parameters": parameters,
        "eval_loss": eval_loss,
        "perplexity": float(torch.tensor(eval_loss).exp()),
        "optimizer_state_bytes": state_bytes,
        "median_step_seconds": timer.median_step_seconds(),
        "median_optimizer_step_seconds": timer.median_optimizer_seconds(),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "steps": steps,
        "train_tokens": steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        * task.seq_len,
        "loss_curve": curve,
        "output_dir": str(run_dir),
    }
    is_main = trainer.is_world_process_zero()
    del trainer, model
    gc.collect()
    return result, is_main


def _write_card(run: dict[str, Any], runs: list[dict[str, Any]], args: EffiTrainingArguments, task) -> None:
    name = run["optimizer"]
    write_model_card(
        run["output_dir"],
        base_model=None,
        method=name,
        summary=f"A {run['parameters'] / 1e6:.1f}M-parameter Llama pretrained from scratch for {run['steps']} steps "
        f"with {name} by the hf_effi quickstart, beside runs with the same model, data, seed and schedule but "
        "other optimizers. It is a demonstration of the measurements, not a useful language model.",
        settings={
            "optimizer": name,
            "learning_rate": run["learning_rate"],
            "optimizer_args": run["optimizer_args"],
            "schedule": args.effi_schedule or str(args.lr_scheduler_type),
            "schedule_args": args.effi_schedule_args,
            "warmup_steps": args.warmup_steps,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "processes": args.world_size,
            "max_grad_norm": args.max_grad_norm,
            "weight_decay": args.weight_decay,
            "seed": args.seed,
        },
        data={"dataset": f"hf_effi.testing.pretrain_task, corpus {task.corpus!r} (Python's own documentation)",
              "tokenizer": SMOLLM2_NAME, "seq_len": task.seq_len, "tokens": run["train_tokens"],
              "held-out tokens": task.info["eval_tokens"]},
        metrics={
            "held-out loss": (run["eval_loss"], "nats/token"),
            "held-out perplexity": run["perplexity"],
            "optimizer state": (run["optimizer_state_bytes"], "bytes"),
            "median step time": (run["median_step_seconds"], "s"),
            "median optimizer.step() time": (run["median_optimizer_step_seconds"], "s"),
        },
        tags=["pretraining", "quickstart"],
        extra_sections={"Comparison with the other quickstart runs": comparison_markdown(runs)},
    )


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    qs, args = parse_recipe_args((QuickstartArguments, EffiTrainingArguments), argv)
    if importlib.util.find_spec("matplotlib") is None:  # fail before training, not after
        raise ImportError("the quickstart plots its loss curves with matplotlib: pip install matplotlib")
    if not torch.cuda.is_available() and not args.use_cpu:
        # Without it, `accelerate launch` with several CPU processes gives independent runs instead of DDP.
        args = dataclasses.replace(args, use_cpu=True)
    task = pretrain_task(seq_len=qs.seq_len, seed=qs.task_seed, max_eval_tokens=qs.max_eval_tokens)
    outcomes = [train_one(name, qs, args, task) for name in qs.optimizers]
    runs = [run for run, _ in outcomes]
    if not outcomes[0][1]:
        return 0  # other processes trained their share; the main one reports
    out = Path(args.output_dir)
    table = format_table(runs)
    print("\n" + table + "\n")
    write_loss_plot(runs, out / "loss_curves.png")
    for run in runs:
        _write_card(run, runs, args, task)
    wall = time.perf_counter() - started
    results = {
        "recipe": "quickstart",
        "wall_seconds": wall,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "device": str(args.device), "torch_threads": torch.get_num_threads(),
                    "world_size": args.world_size, "distributed_type": str(args.distributed_state.distributed_type)},
        "task": task.info,
        "training": {k: v for k, v in args.to_dict().items() if not k.startswith(("push_to_hub", "hub_"))},
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'results.json'}, {out / 'loss_curves.png'} and a model card per run")
    print(f"quickstart wall time: {wall:.1f} s (argument parsing to results; imports and the launcher come on top)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
