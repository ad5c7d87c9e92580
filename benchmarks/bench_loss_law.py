"""Loss-curve law with lr annealing: fit on runs with two schedules, predict the final loss of a third.

Tissue et al., "Scaling Law with Learning Rate Annealing", arXiv 2408.11029: ``L = L0 + A*S1^-alpha - C*S2``.
Runs: if ``results/schedule_runs/<schedule>_seed<k>.jsonl`` logs (step, lr, loss) from the schedules benchmark
exist for at least three schedules, they are used (training loss, fit on cosine + wsd when present). Otherwise this
script trains its own runs on ``hf_effi.testing.pretrain_task`` (the ~20M Llama, seq_len 64) with ``EffiTrainer``:
constant and cosine to fit, wsd (1-sqrt decay over the last 20%) to predict, every schedule over the same seeds,
and logs the held-out loss on a fixed 16-row subset every 2 steps (a smooth curve, no batch noise). The error is
the predicted final loss of the held-out schedule against its measured final loss, averaged over seeds, set beside
the seed-to-seed sd of that final loss.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS_DIR, make_rows, mean_sd, parse_args, write_result  # noqa: E402

from hf_effi.utils import mean_loss  # noqa: E402

NAME = "loss_law"
CLAIM = "The annealing loss-curve law fitted on two schedules predicts the final loss of a third."
RUNS_DIR = RESULTS_DIR / "schedule_runs"
FIT_PREFERENCE = ("cosine", "wsd", "constant", "linear", "rex", "refined")


def _existing_runs() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(RUNS_DIR.glob("*_seed*.jsonl")) if RUNS_DIR.is_dir() else []:
        found.setdefault(path.stem.rsplit("_seed", 1)[0], []).append(path)
    return found


class HeldOutLoss(TrainerCallback):
    """Held-out loss on a fixed subset every ``eval_every`` optimizer steps (and at the last), into ``records``."""

    def __init__(self, records: list[dict], lrs: list[float], eval_set, eval_every: int, steps: int):
        self.records, self.lrs, self.eval_set, self.eval_every, self.steps = records, lrs, eval_set, eval_every, steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        s = state.global_step
        if s % self.eval_every == 0 or s == self.steps:
            loss = mean_loss(model, self.eval_set, batch_size=len(self.eval_set))
            self.records.append({"step": s, "lr": self.lrs[s - 1], "eval_loss": loss})


def _train_runs(schedules, seeds, *, steps, batch, peak_lr, eval_rows, eval_every, smoke, out_dir):
    """Train one run per (schedule, seed); return ``{schedule: [records, ...]}`` with per-step records
    ``{"step", "lr", "loss"}`` and ``{"step", "lr", "eval_loss"}`` every ``eval_every`` steps."""
    from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback

    from hf_effi.schedules import make_scheduler
    from hf_effi.testing import pretrain_task
    from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

    schedule_args = {"constant": {}, "cosine": {}, "wsd": {"decay_ratio": 0.2, "decay_type": "1-sqrt"}}
    warmup = max(1, steps // 12)
    runs: dict[str, list[list[dict]]] = {s: [] for s in schedules}
    seconds = {}
    for seed in seeds:
        task = pretrain_task(seq_len=64, seed=seed, max_train_tokens=steps * batch * 64 + 64)
        eval_set = task.eval_dataset.select(range(eval_rows))
        for name in schedules:
            if smoke:
                cfg = LlamaConfig(
                    vocab_size=task.config.vocab_size,
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    tie_word_embeddings=True,
                )
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    model = LlamaForCausalLM(cfg)
            else:
                model = task.make_model(seed=seed)
            mults = make_scheduler(
                name,
                torch.optim.SGD([torch.zeros(1)], lr=1.0),
                num_training_steps=steps,
                warmup=warmup,
                **schedule_args[name],
            ).values(steps)
            lrs = [peak_lr * m for m in mults]  # update s (1-based) uses multiplier s-1
            records: list[dict] = []

            args = EffiTrainingArguments(
                str(out_dir / f"{name}_seed{seed}"),
                effi_optim="adamw",
                effi_schedule=name,
                effi_schedule_args=schedule_args[name],
                warmup_steps=warmup,
                learning_rate=peak_lr,
                weight_decay=0.1,
                max_steps=steps,
                per_device_train_batch_size=batch,
                logging_steps=1,
                seed=seed,
                data_seed=seed,
                save_strategy="no",
                report_to="none",
                use_cpu=True,
                disable_tqdm=True,
                dataloader_num_workers=0,
            )
            trainer = EffiTrainer(
                model=model,
                args=args,
                train_dataset=task.train_dataset,
                callbacks=[HeldOutLoss(records, lrs, eval_set, eval_every, steps)],
            )
            trainer.remove_callback(PrinterCallback)  # the records below hold every logged number
            start = time.perf_counter()
            trainer.train()
            seconds[f"{name}_seed{seed}"] = time.perf_counter() - start
            records += [
                {"step": h["step"], "lr": lrs[h["step"] - 1], "loss": h["loss"]}
                for h in trainer.state.log_history
                if "loss" in h
            ]
            runs[name].append(sorted(records, key=lambda r: r["step"]))
            print(
                f"{name} seed {seed}: {seconds[f'{name}_seed{seed}']:.0f} s, final held-out "
                f"{_final(records, 'eval_loss', 1):.4f}",
                file=sys.stderr,
                flush=True,
            )
    return runs, seconds


def _final(records: list[dict], key: str, tail: int, curve: np.ndarray | None = None) -> float:
    """Mean of ``key`` over the last ``tail`` logged records, or of ``curve`` (indexed by step) at those steps."""
    steps = [r["step"] for r in records if key in r][-tail:]
    if curve is not None:
        return float(np.mean(curve[np.array(steps) - 1]))
    return float(np.mean([r[key] for r in records if key in r][-tail:]))


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    from hf_effi.schedules.laws import LossCurveRun, fit_loss_curve, predict_loss_curve

    existing = _existing_runs()
    use_existing = not args.smoke and len(existing) >= 3
    steps, batch, peak_lr = (16, 2, 1e-2) if args.smoke else (60, 8, 2e-3)
    if use_existing:
        runs = {s: [[json.loads(x) for x in p.read_text().splitlines() if x.strip()] for p in paths]
                for s, paths in existing.items()}  # fmt: skip
        key, tail, min_step, seconds = "loss", 5, 5, {}
        fit_on = [s for s in FIT_PREFERENCE if s in runs][:2]
        source = f"the schedules benchmark logs ({len(runs)} schedules, results/{RUNS_DIR.name}/)"
    else:
        fit_on, seeds = ["constant", "cosine"], ([0] if args.smoke else [0, 1])
        out_dir = Path(tempfile.mkdtemp(prefix="hf_effi_bench_loss_law_"))  # Trainer's output_dir; nothing saved
        runs, seconds = _train_runs(
            [*fit_on, "wsd"],
            seeds,
            steps=steps,
            batch=batch,
            peak_lr=peak_lr,
            eval_rows=4 if args.smoke else 16,
            eval_every=2,
            smoke=args.smoke,
            out_dir=out_dir,
        )
        key, tail, min_step = "eval_loss", 1, 2 if args.smoke else 6
        source = "own runs on pretrain_task"

    def to_run(records):
        return LossCurveRun.from_records(records, loss_key=key)

    fit_runs = [to_run(r) for s in fit_on for r in runs[s]]
    params = fit_loss_curve(fit_runs, min_step=min_step, huber_delta=0.01)

    rows, details = [], {"params": params.to_dict(), "fit_on": fit_on, "source": source, "per_schedule": {}}
    for schedule, seed_runs in runs.items():
        measured = [_final(r, key, tail) for r in seed_runs]
        predicted = [_final(r, key, tail, predict_loss_curve(params, to_run(r).lrs)) for r in seed_runs]
        m_mean, m_sd = mean_sd(measured)
        p_mean, _ = mean_sd(predicted)
        role = "fitted" if schedule in fit_on else "predicted"
        rows += make_rows(
            "final loss",
            "nats",
            {f"{schedule} measured": m_mean, f"{schedule} law ({role})": p_mean},
            f"{schedule} measured",
            sds={f"{schedule} measured": m_sd},
        )
        details["per_schedule"][schedule] = {
            "role": role,
            "measured": measured,
            "predicted": predicted,
            "seed_sd": m_sd,
            "relative_error": (p_mean - m_mean) / m_mean,
            "abs_error": p_mean - m_mean,
            "within_seed_noise": abs(p_mean - m_mean) <= m_sd,
        }
    details["run_seconds"] = seconds
    config = {
        "steps": steps,
        "batch": batch,
        "seq_len": 64,
        "peak_lr": peak_lr,
        "optimizer": "adamw",
        "loss": key,
        "min_step": min_step,
        "lam": params.lam,
        "seeds": len(next(iter(runs.values()))),
    }
    notes = (
        f"Fitted (L0, A, alpha, C) with a Huber loss on {', '.join(fit_on)} ({source}); the other rows are "
        f"predictions from the lr sequence alone. Loss: {key} (held-out subset when own runs). 'ratio' of a law row "
        "is predicted / measured final loss; the seed sd of the measured final loss is the noise floor."
    )
    return write_result(
        NAME,
        {"claim": CLAIM, "config": config, "rows": rows, "notes": notes, "details": details},
        args.out,
        smoke=args.smoke,
    )


if __name__ == "__main__":
    print(main())
