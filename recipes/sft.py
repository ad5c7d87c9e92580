"""Fine-tune a causal LM with full AdamW, LoRA, LISA, HFT, Spectrum or zeroth-order training, chosen in YAML.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/sft.py --config recipes/configs/sft_lisa.yaml \
        [--method hft --max_steps 40 --model tiny ...]

``method`` picks the trainer (``full``: EffiTrainer on every weight; ``lora``: peft LoRA on every Linear;
``lisa``: LISATrainer; ``hft``: HFTTrainer; ``spectrum``: ``spectrum_freeze`` then EffiTrainer; ``zo``: ZOTrainer)
and with it the arguments class, so ``lisa_*``, ``hft_*`` and ``zo_*`` keys are accepted for their method only.
The default model is the real SmolLM2-135M-Instruct (``model: smollm2``), fine-tuned on Python's documentation
(next-token loss on every token) and scored on the held-out documents; ``model: tiny`` swaps in a tiny random Llama
for tests, a path loads any saved causal LM. It writes the final model (or adapter), the tokenizer, a model card and
``results.json`` under ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from _common import StepTimer, parse_recipe_args

from hf_effi.cards import write_model_card
from hf_effi.testing import SMOLLM2_NAME, load_smollm2, pretrain_task, tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments
from hf_effi.trainers.hft import HFTArguments, HFTTrainer
from hf_effi.trainers.lisa import LISAArguments, LISATrainer
from hf_effi.trainers.spectrum import spectrum_freeze
from hf_effi.utils import mean_loss, optimizer_state_bytes

__all__ = ["METHODS", "SFTArguments", "main"]

METHODS = ("full", "lora", "lisa", "hft", "spectrum", "zo")


@dataclass
class SFTArguments:
    """What is fine-tuned on which text, and the method's own knobs; the loop comes from the method's arguments."""

    method: str = field(default="lisa", metadata={"help": f"One of {', '.join(METHODS)}."})
    model: str = field(
        default="smollm2",
        metadata={"help": "smollm2 (the real SmolLM2-135M-Instruct), tiny (a tiny random Llama), or a model folder."},
    )
    corpus: str = field(default="python_docs", metadata={"help": "python_docs or python_code (see hf_effi.data)."})
    seq_len: int = field(default=64, metadata={"help": "Tokens per training and evaluation row."})
    max_train_tokens: int = field(default=65536, metadata={"help": "Training tokens taken from the corpus."})
    max_eval_tokens: int = field(default=4096, metadata={"help": "Held-out tokens the final loss is measured on."})
    lora_r: int = field(default=8, metadata={"help": "method=lora: adapter rank."})
    lora_alpha: int = field(default=16, metadata={"help": "method=lora: scaling numerator (alpha / r)."})
    spectrum_top_percent: float = field(
        default=25.0, metadata={"help": "method=spectrum: share of each module type that trains (paper: 25 or 50)."}
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {list(METHODS)}")


def _arguments_class(method: str) -> type:
    if method == "lisa":
        return LISAArguments
    if method == "hft":
        return HFTArguments
    if method == "zo":
        from hf_effi.trainers.zo import ZOArguments

        return ZOArguments
    return EffiTrainingArguments


def _peek_method(argv: list[str]) -> str:
    """The method named on the command line, else in the --config YAML, else the default."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        path = Path(argv[argv.index("--config") + 1])
        if path.is_file():
            loaded = yaml.safe_load(path.read_text()) or {}
            if isinstance(loaded, dict) and "method" in loaded:
                return str(loaded["method"])
    return SFTArguments.method


def build_model(name: str, tokenizer, seed: int) -> torch.nn.Module:
    if name == "smollm2":
        model, _ = load_smollm2()
    elif name == "tiny":
        model = tiny_model("llama", vocab_size=len(tokenizer), seed=seed)
    else:
        from transformers import AutoModelForCausalLM

        if not (Path(name) / "config.json").is_file():
            raise ValueError(f"model={name!r} is neither 'smollm2', 'tiny' nor a folder with config.json")
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    model.train()
    return model


def build_trainer(sa: SFTArguments, args, model, task, callbacks):
    """The trainer for ``sa.method`` (the model is wrapped or frozen here as the method needs)."""
    common = dict(args=args, train_dataset=task.train_dataset, processing_class=task.tokenizer, callbacks=callbacks)
    extra = {}
    if sa.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=sa.lora_r, lora_alpha=sa.lora_alpha, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    if sa.method == "spectrum":
        extra["spectrum_selection"] = spectrum_freeze(model, top_percent=sa.spectrum_top_percent)
    if sa.method == "lisa":
        return LISATrainer(model=model, **common), extra
    if sa.method == "hft":
        return HFTTrainer(model=model, **common), extra
    if sa.method == "zo":
        from hf_effi.trainers.zo import ZOTrainer

        return ZOTrainer(model=model, **common), extra
    return EffiTrainer(model=model, **common), extra


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    method = _peek_method(argv)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {list(METHODS)}")
    sa, args = parse_recipe_args((SFTArguments, _arguments_class(method)), argv)
    if not torch.cuda.is_available() and not args.use_cpu:
        args = dataclasses.replace(args, use_cpu=True)
    task = pretrain_task(seq_len=sa.seq_len, seed=args.seed, corpus=sa.corpus, max_train_tokens=sa.max_train_tokens,
                         max_eval_tokens=sa.max_eval_tokens)
    model = build_model(sa.model, task.tokenizer, args.seed)
    timer = StepTimer()
    trainer, extra = build_trainer(sa, args, model, task, [timer])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    eval_loss = mean_loss(trainer.model, task.eval_dataset, batch_size=args.per_device_eval_batch_size)
    if not trainer.is_world_process_zero():
        return 0
    out = Path(args.output_dir)
    trainer.save_model(str(out))
    steps = trainer.state.global_step
    tokens = steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size * task.seq_len
    settings = {k: v for k, v in dataclasses.asdict(args).items()
                if k.startswith(("lisa_", "hft_", "zo_")) or k in ("learning_rate", "weight_decay", "effi_optim",
                                                                   "effi_schedule", "warmup_steps", "seed",
                                                                   "per_device_train_batch_size",
                                                                   "gradient_accumulation_steps")}
    if sa.method == "lora":
        settings |= {"lora_r": sa.lora_r, "lora_alpha": sa.lora_alpha}
    if sa.method == "spectrum":
        settings["spectrum_top_percent"] = sa.spectrum_top_percent
        (out / "spectrum_selection.yaml").write_text(yaml.safe_dump(extra["spectrum_selection"], sort_keys=False))
    result = {
        "recipe": "sft",
        "method": sa.method,
        "model": sa.model,
        "trainable_parameters_at_start": trainable,
        "steps": steps,
        "train_tokens": tokens,
        "eval_loss": eval_loss,
        "perplexity": float(torch.tensor(eval_loss).exp()),
        "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
        "median_step_seconds": timer.median_step_seconds() if timer.step_seconds else None,
        "settings": settings,
        "wall_seconds": time.perf_counter() - started,
    }
    if hasattr(trainer, "selection_history"):
        result["selection_history"] = [[s, list(g)] for s, g in trainer.selection_history]
    base = {"smollm2": SMOLLM2_NAME, "tiny": "hf_effi.testing.tiny_model('llama') (random weights)"}.get(sa.model, sa.model)
    write_model_card(
        out,
        base_model=base,
        method=sa.method,
        summary=f"{sa.model} fine-tuned for {steps} steps ({tokens:,} tokens) on Python's documentation with "
        f"{sa.method} by hf_effi's sft recipe.",
        settings=settings,
        data={"dataset": f"hf_effi corpus {sa.corpus!r} (train split)", "seq_len": task.seq_len, "tokens": tokens},
        metrics={"held-out loss": (eval_loss, "nats/token"), "held-out perplexity": result["perplexity"],
                 "optimizer state": (result["optimizer_state_bytes"], "bytes")},
        tags=["sft", sa.method],
    )
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"{sa.method}: held-out loss {eval_loss:.4f} after {steps} steps, optimizer state "
          f"{result['optimizer_state_bytes']:,} B; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
