"""LAMB at 8x the batch size vs AdamW at the base batch, at equal tokens, on ``hf_effi.testing.pretrain_task``.

LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", arXiv 1904.00962) is
sold as the optimizer that keeps quality when the batch grows; Nado et al. (arXiv 2102.06356) found tuned Adam
matches it. Three variants see the same rows in the same order (equal tokens): AdamW at batch B, AdamW at 8B and
LAMB at 8B (so both 8B runs take 8x fewer steps). Held-out loss is the token-weighted mean NLL on the task's
held-out split, mean +- sd over 3 seeds (seed = model init and document order).

Sizing (CPU, one thread, ~10 min in all): sequence length 32, B = 1 row, 8B = 8 rows, 96 rows (3,072 tokens) per run,
2,048 held-out tokens. That is a very short run: it compares early-training progress, not converged quality.
Hyperparameters, fixed in advance and not tuned: AdamW lr 3e-3 at B and 3e-3 * sqrt(8) at 8B (square-root
scaling for Adam), LAMB lr 1e-2; betas (0.9, 0.999) at B, with beta2 rescaled to 0.999 ** 8 at 8B by
``make(batch_size=8, reference_batch_size=1)`` (:mod:`hf_effi.optim.batch_rules`); weight decay 0.01; cosine
schedule with 10% warmup.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import make_rows, mean_sd, parse_args, write_result  # noqa: E402

import hf_effi  # noqa: E402
import hf_effi.optim.lamb  # noqa: E402,F401
from hf_effi.utils import mean_loss  # noqa: E402

NAME = "lamb_large_batch"
CLAIM = "LAMB at 8x the batch size vs AdamW at the base batch, held-out loss at equal tokens on pretrain_task."
SEEDS = (0, 1, 2)
BASE_LR = 3e-3
# variant -> (optimizer, rows per step, lr)
VARIANTS = {
    "adamw_B": ("adamw", 1, BASE_LR),
    "adamw_8B": ("adamw", 8, BASE_LR * math.sqrt(8)),
    "lamb_8B": ("lamb", 8, 1e-2),
}


def _sizes(smoke: bool) -> dict:
    if smoke:
        return dict(seq_len=16, rows=16, eval_tokens=64, seeds=(0,), shrink=True)
    return dict(seq_len=32, rows=96, eval_tokens=2048, seeds=SEEDS, shrink=False)


def _model(task, seed: int, shrink: bool):
    if not shrink:
        return task.make_model(seed)
    from transformers import LlamaForCausalLM

    config = task.config.__class__(
        **{
            **task.config.to_dict(),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
        }
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def train_one(task, seed: int, variant: str, sizes: dict) -> tuple[float, float]:
    """Train one variant from the seed's init on the first ``rows`` rows; return (held-out loss, seconds)."""
    name, rows_per_step, lr = VARIANTS[variant]
    model = _model(task, seed, sizes["shrink"])
    steps = sizes["rows"] // rows_per_step
    opt, sched = hf_effi.make(
        name,
        model,
        lr=lr,
        num_training_steps=steps,
        schedule="cosine",
        warmup=0.1,
        weight_decay=0.01,
        batch_size=rows_per_step,
        reference_batch_size=1,
    )
    data = torch.tensor(task.train_dataset[: sizes["rows"]]["input_ids"])
    start = time.process_time()
    for step in range(steps):
        batch = data[step * rows_per_step : (step + 1) * rows_per_step]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    seconds = time.process_time() - start
    return mean_loss(model, task.eval_dataset, batch_size=16), seconds


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    from hf_effi.testing import pretrain_task

    sizes = _sizes(args.smoke)
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    initial: list[float] = []
    info = None
    for seed in sizes["seeds"]:
        task = pretrain_task(
            seq_len=sizes["seq_len"],
            seed=seed,
            max_train_tokens=sizes["rows"] * sizes["seq_len"],
            max_eval_tokens=sizes["eval_tokens"],
        )
        info = task.info
        initial.append(mean_loss(_model(task, seed, sizes["shrink"]), task.eval_dataset, batch_size=16))
        for variant in VARIANTS:
            loss, sec = train_one(task, seed, variant, sizes)
            losses[variant].append(loss)
            seconds[variant].append(sec)
    stats = {v: mean_sd(x) for v, x in losses.items()}
    rows = make_rows(
        "held-out loss at equal tokens",
        "nats",
        {v: s[0] for v, s in stats.items()},
        "adamw_B",
        sds={v: s[1] for v, s in stats.items()},
    )
    time_stats = {v: mean_sd(x) for v, x in seconds.items()}
    rows += make_rows(
        "training CPU time per run",
        "s",
        {v: s[0] for v, s in time_stats.items()},
        "adamw_B",
        sds={v: s[1] for v, s in time_stats.items()},
    )
    payload = {
        "claim": CLAIM,
        "config": {
            "task": "pretrain_task",
            "task_info": info,
            "seq_len": sizes["seq_len"],
            "train_rows": sizes["rows"],
            "train_tokens": sizes["rows"] * sizes["seq_len"],
            "eval_tokens": sizes["eval_tokens"],
            "seeds": list(sizes["seeds"]),
            "smoke_model_shrunk": sizes["shrink"],
            "variants": {
                v: {"optimizer": n, "rows_per_step": b, "lr": lr, "steps": sizes["rows"] // b}
                for v, (n, b, lr) in VARIANTS.items()
            },
            "betas_at_B": [0.9, 0.999],
            "beta2_rule": "beta2 ** (batch / 1) via make(batch_size, reference_batch_size)",
            "weight_decay": 0.01,
            "schedule": "cosine, 10% warmup",
        },
        "rows": rows,
        "notes": (
            f"Mean +- sd over seeds {list(sizes['seeds'])} (model init and document order). Held-out loss at init: "
            f"{mean_sd(initial)[0]:.3f} nats. Every variant sees the same {sizes['rows'] * sizes['seq_len']:,} tokens "
            "in the same order; the 8B variants take 8x fewer optimizer steps. A short CPU run (see the script "
            "docstring for sizes and the untuned, fixed hyperparameters): it measures early progress per token, not "
            "converged quality. CPU time is process time on a machine shared with other jobs."
        ),
        "details": {"losses": losses, "cpu_seconds": seconds, "initial_losses": initial},
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
