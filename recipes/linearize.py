"""Linearize a pretrained causal LM end to end: swap its attention, attention transfer, LoRA, evaluate, save.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/linearize.py \
        --config recipes/configs/linearize_lolcats.yaml [--method liger --output_dir runs/lin_liger ...]

Stages (LoLCATs, arXiv:2410.10254):
1. ``hf_effi.linearize(model, method)``: softmax attention -> linear (+ sliding window) attention, reusing q/k/v/o.
2. Attention transfer (``AttentionTransferTrainer``): only the new feature maps / window weights train, to match
   each layer's own softmax output. Skipped for methods that add no parameters (``liger``).
3. LoRA (peft, r=8, alpha=16 on q/k/v/o) with next-token cross-entropy (``EffiTrainer``).
4. Held-out perplexity on both shipped domains (documentation and code) of: the original model, the untrained swap,
   after transfer, after transfer + LoRA, and the fair baseline — the original softmax model given the same LoRA
   steps on the same data (``train_baseline``), since LoRA also adapts the model to the domain.
5. Merge LoRA, ``save_linearized`` (loads back with ``AutoModelForCausalLM.from_pretrained`` after
   ``import hf_effi``), a model card, and ``results.json``.

The default is SmolLM2-135M-Instruct (``hf_effi.testing.load_smollm2()``) on Python's documentation, ~40k tokens per
stage, which runs on a CPU in minutes. Each stage checkpoints under ``output_dir`` and a rerun continues where the last
one stopped (a finished stage is not repeated). On GPUs use ``recipes/accelerate/gpu.yaml``; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import parse_recipe_args
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import get_last_checkpoint

import hf_effi
from hf_effi.data import chunk_token_stream, corpus_token_stream, load_tokenizer
from hf_effi.linear import linear_layers, linear_parameters, save_linearized
from hf_effi.testing import SMOLLM2_NAME, load_smollm2, tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments
from hf_effi.trainers.attention_transfer import AttentionTransferArguments, AttentionTransferTrainer

__all__ = ["LinearizeRecipeArguments", "main"]

MODELS = ("smollm2", "tiny")
DOMAINS = {"docs": "python_docs", "code": "python_code"}
BASELINE = "softmax + LoRA (fair baseline)"


@dataclass
class LinearizeRecipeArguments:
    """The model, the conversion, the data and the budget of both stages."""

    model: str = field(default="smollm2", metadata={"help": "smollm2 (SmolLM2-135M-Instruct) or tiny (a random "
                                                             "2-layer Llama with SmolLM2's vocabulary, for tests)."})
    method: str = field(default="lolcats", metadata={"help": "lolcats, hedgehog, based, liger, elu or relu."})
    window: int | None = field(default=None, metadata={"help": "Sliding window (default: the method's, 64)."})
    feature_dim: int | None = field(default=None, metadata={"help": "Learnable feature-map size (method default)."})
    sinks: int = field(default=0, metadata={"help": "Hybrids: the first tokens kept under exact softmax after they "
                                                    "leave the window (attention sinks); 0 = the paper's hybrid."})
    corpus: str = field(default="python_docs", metadata={"help": "Training text: python_docs or python_code."})
    seq_len: int = field(default=256, metadata={"help": "Tokens per training/eval row."})
    train_tokens: int = field(default=40_960, metadata={
        "help": "Training tokens of stage 2 (LoRA) and of the fair baseline; of stage 1 too unless transfer_tokens "
                "is set."})
    transfer_tokens: int | None = field(default=None, metadata={
        "help": "Training tokens of stage 1 (attention transfer); default: train_tokens. Both stages read the same "
                "stream from its start."})
    eval_tokens: int = field(default=8_192, metadata={"help": "Held-out tokens per domain."})
    batch_size: int = field(default=4, metadata={"help": "Rows per optimizer step (both stages)."})
    transfer_lr: float = field(default=1e-2, metadata={"help": "Stage-1 learning rate (feature maps)."})
    lora_lr: float = field(default=1e-3, metadata={"help": "Stage-2 learning rate (LoRA)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank on q/k/v/o."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_train_linear: bool = field(default=False, metadata={
        "help": "Stage 2 also trains the feature maps and window weights beside LoRA (LoLCATs' finetune_lora_fqkvo "
                "config); the fair baseline has none to train."})
    train_baseline: bool = field(default=True, metadata={"help": "Also LoRA-train the softmax model (fair baseline)."})
    output_dir: str = field(default="runs/linearize", metadata={"help": "Checkpoints, final model, card, results."})
    seed: int = field(default=0, metadata={"help": "Seed of training (data order is fixed)."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every this many steps (resumable)."})
    logging_steps: int = field(default=5, metadata={"help": "Log every this many steps."})
    position_bucket: int = field(default=64, metadata={"help": "results.json also holds the held-out loss averaged "
                                                                  "over each run of this many positions."})

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r} is not one of {MODELS}")
        if self.transfer_tokens is None:
            self.transfer_tokens = self.train_tokens
        for name in ("seq_len", "train_tokens", "transfer_tokens", "eval_tokens", "batch_size", "lora_r",
                     "save_steps", "position_bucket"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_tokens", "transfer_tokens"):
            if getattr(self, name) < self.seq_len * self.batch_size:
                raise ValueError(f"{name}={getattr(self, name)} is less than one step "
                                 f"(seq_len x batch_size = {self.seq_len * self.batch_size})")


def load_model(which: str, tokenizer) -> torch.nn.Module:
    if which == "smollm2":
        model, _ = load_smollm2()
        return model
    return tiny_model("llama", vocab_size=len(tokenizer), num_hidden_layers=2, max_position_embeddings=2048)


def stage_args(ra: LinearizeRecipeArguments, stage: str, lr: float, steps: int, cls=EffiTrainingArguments, **kw):
    return cls(
        output_dir=str(Path(ra.output_dir) / stage), per_device_train_batch_size=ra.batch_size, max_steps=steps,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10), seed=ra.seed,
        save_strategy="steps", save_steps=ra.save_steps, save_total_limit=1, logging_steps=ra.logging_steps,
        report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(), **kw,
    )


def train_stage(trainer) -> None:
    """Train, continuing from the stage's last checkpoint when one exists (a rerun after an interruption)."""
    last = get_last_checkpoint(trainer.args.output_dir) if Path(trainer.args.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)


def lora(model, ra: LinearizeRecipeArguments):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=ra.lora_r, lora_alpha=ra.lora_alpha, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(model, config)


def run_lora(model, ra, stage: str, data, steps: int):
    """Stage 2 (or the baseline): LoRA on q/k/v/o (+ the linear parameters with ``lora_train_linear``); returns the
    merged model. A finished stage is reloaded."""
    done = Path(ra.output_dir) / stage / "merged_lora.safetensors"
    peft_model = lora(model, ra)
    if ra.lora_train_linear and linear_layers(peft_model):  # the softmax baseline has none
        for p in linear_parameters(peft_model):
            p.requires_grad_(True)
    if done.is_file():
        peft_model.load_state_dict(load_file(str(done)), strict=False)
        return peft_model.merge_and_unload()
    args = stage_args(ra, stage, ra.lora_lr, steps)
    train_stage(EffiTrainer(model=peft_model, args=args, train_dataset=data))
    adapter = {n: p.detach().contiguous() for n, p in peft_model.named_parameters() if p.requires_grad}
    save_file(adapter, str(done))
    return peft_model.merge_and_unload()


def position_nll(model, dataset, batch_size: int = 4) -> torch.Tensor:
    """Mean next-token loss (nats) at each position ``[seq_len - 1]`` over the rows of ``dataset`` (full rows, no
    padding), so ``exp(mean)`` is the perplexity and the curve shows where a linearized model loses."""
    ids = torch.tensor(dataset["input_ids"])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(ids.shape[1] - 1, dtype=torch.float64)
    try:
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                batch = ids[start:start + batch_size].to(device)
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
                total += nll.sum(0).double().cpu()
    finally:
        model.train(was_training)
    return total / len(ids)


def evaluate(model, evals: dict, bucket: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Perplexity per domain, and the mean loss over each run of ``bucket`` positions per domain."""
    ppl, by_position = {}, {}
    for domain, ds in evals.items():
        nll = position_nll(model, ds)
        ppl[domain] = math.exp(nll.mean().item())
        by_position[domain] = [nll[i:i + bucket].mean().item() for i in range(0, len(nll), bucket)]
    return ppl, by_position


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    (ra,) = parse_recipe_args((LinearizeRecipeArguments,), argv)
    out = Path(ra.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer()
    stream = corpus_token_stream(ra.corpus, "train", tokenizer, shuffle_seed=0)
    train = chunk_token_stream(stream, ra.seq_len, max_tokens=max(ra.train_tokens, ra.transfer_tokens))
    transfer_rows = min(len(train), ra.transfer_tokens // ra.seq_len)
    lora_rows = min(len(train), ra.train_tokens // ra.seq_len)
    transfer_data = train.select(range(transfer_rows)) if transfer_rows < len(train) else train
    lora_data = train.select(range(lora_rows)) if lora_rows < len(train) else train
    evals = {d: chunk_token_stream(corpus_token_stream(c, "eval", tokenizer), ra.seq_len, max_tokens=ra.eval_tokens)
             for d, c in DOMAINS.items()}
    steps = max(1, lora_rows // ra.batch_size)
    transfer_steps = max(1, transfer_rows // ra.batch_size)
    lora_tokens = steps * ra.batch_size * ra.seq_len
    ppl: dict[str, dict[str, float]] = {}
    by_position: dict[str, dict[str, list[float]]] = {}

    def record(stage: str, m) -> None:
        ppl[stage], by_position[stage] = evaluate(m, evals, ra.position_bucket)

    model = load_model(ra.model, tokenizer)
    record("original", model)
    if ra.train_baseline:
        torch.manual_seed(ra.seed)
        baseline = run_lora(load_model(ra.model, tokenizer), ra, "baseline_lora", lora_data, steps)
        record(BASELINE, baseline)
        del baseline

    torch.manual_seed(ra.seed)
    lin = hf_effi.linearize(model, ra.method, window=ra.window, feature_dim=ra.feature_dim, sinks=ra.sinks)
    record("swapped, untrained", lin)
    transfer_tokens = 0
    if linear_parameters(lin):
        done = out / "transfer" / "linear_parameters.safetensors"
        names = [n for n, p in lin.named_parameters() if any(p is q for q in linear_parameters(lin))]
        if done.is_file():
            lin.load_state_dict(load_file(str(done)), strict=False)
        else:
            args = stage_args(ra, "transfer", ra.transfer_lr, transfer_steps, cls=AttentionTransferArguments)
            train_stage(AttentionTransferTrainer(model=lin, args=args, train_dataset=transfer_data))
            params = dict(lin.named_parameters())
            save_file({n: params[n].detach().contiguous() for n in names}, str(done))
        for p in lin.parameters():
            p.requires_grad_(True)
        transfer_tokens = transfer_steps * ra.batch_size * ra.seq_len
        record("after attention transfer", lin)
    lin = run_lora(lin, ra, "lora", lora_data, steps)
    record("after transfer + LoRA", lin)

    final = out / "model"
    base_ppl = ppl.get(BASELINE)
    ratios = {d: ppl["after transfer + LoRA"][d] / base_ppl[d] for d in DOMAINS} if base_ppl else {}
    metrics = {f"perplexity {stage} ({d})": v for stage, by in ppl.items() for d, v in by.items()}
    metrics.update({f"perplexity ratio vs fair baseline ({d})": r for d, r in ratios.items()})
    save_linearized(lin, final, card_metrics=metrics,
                    tokens={"attention transfer": transfer_tokens, "lora": lora_tokens},
                    base_model=SMOLLM2_NAME if ra.model == "smollm2" else None)
    tokenizer.save_pretrained(final)
    result = {"recipe": "linearize", **dataclasses.asdict(ra), "transfer_steps": transfer_steps if transfer_tokens else 0,
              "lora_steps": steps, "transfer_tokens": transfer_tokens, "lora_tokens": lora_tokens, "perplexity": ppl,
              "ratio_vs_fair_baseline": ratios,
              "loss_by_position": {"bucket": ra.position_bucket, **by_position}, "wall_seconds": time.perf_counter() - started}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    for stage, by in ppl.items():
        print(f"{stage:32s} " + "  ".join(f"{d} ppl {v:9.2f}" for d, v in by.items()))
    print(f"wrote {final} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
