"""Learning-rate schedules at equal steps: held-out loss of cosine, linear, WSD, REX and refined, 3 seeds.

Each seed trains the ``hf_effi.testing.pretrain_task`` Llama (~20M parameters, Python's documentation) from the same
initial weights and data order under every schedule, with AdamW, the same peak lr, batch and number of steps, through
``EffiTrainer``. ``refined`` (Defazio et al., arXiv 2310.07831) is built from the l1 gradient norms that a
``GradNormLogger`` recorded during that seed's ``linear`` run, the paper's recipe (a linear-decay first run, l1 norms
for Adam); it makes its own warmup, the others get a 10% linear warmup. Every run's per-step (step, lr, loss, and
gradient norms where logged) is written to ``results/schedule_runs/<schedule>_seed<k>.jsonl`` for fitting the
loss-curve law.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS_DIR, make_rows, mean_sd, parse_args, write_result  # noqa: E402

NAME = "schedules"
CLAIM = (
    "Held-out loss after equal steps under cosine, linear, WSD, REX and refined schedules (same peak lr, 3 seeds); "
    "refined is built from the gradient norms of the linear run."
)
SCHEDULES = ("cosine", "linear", "wsd", "rex", "refined")


def train_run(task, schedule: str, seed: int, cfg: dict, out_dir: Path, schedule_args: dict | None = None):
    """One EffiTrainer run; returns (held-out loss, per-step log rows, GradNormLogger)."""
    from hf_effi.trainers import EffiTrainer, EffiTrainingArguments
    from hf_effi.trainers.grad_norm_logger import GradNormLogger
    from hf_effi.utils import mean_loss

    args = EffiTrainingArguments(
        str(out_dir / f"{schedule}_seed{seed}"),
        effi_optim="adamw",
        effi_schedule=schedule,
        effi_schedule_args=schedule_args or {},
        learning_rate=cfg["lr"],
        weight_decay=0.0,
        max_grad_norm=cfg["max_grad_norm"],
        warmup_steps=0 if schedule == "refined" else cfg["warmup_steps"],
        max_steps=cfg["steps"],
        per_device_train_batch_size=cfg["batch_size"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
    )
    logger = GradNormLogger()
    model = task.make_model(seed=seed)
    trainer = EffiTrainer(model=model, args=args, train_dataset=task.train_dataset, callbacks=[logger])
    trainer.train()
    loss = mean_loss(trainer.model, task.eval_dataset, batch_size=16)
    norms = {r["step"]: r for r in logger.records}
    rows = []
    for h in trainer.state.log_history:
        if "loss" in h and "learning_rate" in h:
            row = {"step": h["step"], "lr": h["learning_rate"], "loss": h["loss"]}
            extra = norms.get(h["step"], {})
            row.update({k: extra[k] for k in ("grad_norm_l2", "grad_norm_l1") if k in extra})
            rows.append(row)
    return loss, rows, logger


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    from hf_effi.schedules import refine
    from hf_effi.testing import pretrain_task

    cfg = (
        dict(steps=3, seq_len=16, batch_size=1, lr=2e-3, warmup_steps=1, max_grad_norm=1.0, seeds=[0], eval_tokens=256)
        if args.smoke
        else dict(
            steps=60,
            seq_len=64,
            batch_size=4,
            lr=2e-3,
            warmup_steps=6,
            max_grad_norm=1.0,
            seeds=[0, 1, 2],
            eval_tokens=4096,
        )
    )
    task = pretrain_task(seq_len=cfg["seq_len"], max_eval_tokens=cfg["eval_tokens"])
    run_dir = args.out / "schedule_runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="hf_effi_bench_schedules_"))  # Trainer's output_dir; nothing is saved
    losses: dict[str, list[float]] = {s: [] for s in SCHEDULES}
    seconds: dict[str, list[float]] = {s: [] for s in SCHEDULES}
    for seed in cfg["seeds"]:
        linear_logger = None
        for schedule in SCHEDULES:  # linear runs before refined, which is built from its gradient norms
            extra = refine(linear_logger, norm="l1") if schedule == "refined" else None
            start = time.perf_counter()
            loss, rows, logger = train_run(task, schedule, seed, cfg, scratch, extra)
            seconds[schedule].append(time.perf_counter() - start)
            if schedule == "linear":
                linear_logger = logger
            losses[schedule].append(loss)
            path = run_dir / f"{schedule}_seed{seed}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            print(f"seed {seed} {schedule:8s} held-out loss {loss:.4f} ({seconds[schedule][-1]:.0f} s)", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    stats = {s: mean_sd(v) for s, v in losses.items()}
    rows = make_rows(
        "held-out loss",
        "nats",
        {s: m for s, (m, _) in stats.items()},
        "cosine",
        sds={s: sd for s, (_, sd) in stats.items()},
    )
    note_runs = "results/schedule_runs/" if Path(args.out).resolve() == RESULTS_DIR.resolve() else str(run_dir)
    payload = {
        "claim": CLAIM,
        "config": {k: v for k, v in cfg.items()}
        | {
            "optimizer": "adamw",
            "weight_decay": 0.0,
            "task": "pretrain_task (python_docs, ~20M Llama)",
            "warmup": f"{cfg['warmup_steps']} linear steps (refined: none, it makes its own)",
            "schedule_args": "package defaults (wsd: 1-sqrt over the last 10%; rex: alpha 0.5; refined: l1, 0.1 "
            "median filter)",
        },
        "rows": rows,
        "notes": (
            f"Mean ± sd over seeds {cfg['seeds']} (model init and data order both follow the seed); ratio = "
            f"mean loss / cosine's. Per-step logs (step, lr, loss, grad norms) in {note_runs}. "
            "A short run: differences smaller than the sd are not significant."
        ),
        "details": {"losses": losses, "train_seconds": seconds},
    }
    path = write_result(NAME, payload, args.out, smoke=args.smoke)
    print(path)
    return path


if __name__ == "__main__":
    main()
