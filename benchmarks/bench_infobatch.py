"""InfoBatch vs full training on ``hf_effi.testing.pretrain_task()`` (20.5M Llama, Python docs, SmolLM2 tokenizer),
several epochs over a fixed subset: forward/backward samples, optimizer steps and held-out loss, mean ± sd over 3
seeds (the seed sets the initial weights and the data order). Also the overhead of ``GSNRCallback``.

Full mode: 96 training rows of 32 tokens, 8 epochs, batch 8, AdamW lr 1e-3, weight decay 0.1, warmup 10% + cosine,
clip 1.0; InfoBatch with delta 0.875 (epoch 0 and epoch 7 use all data) at the paper's prune ratio 0.5 and at 0.75.
Full training runs through ``EffiTrainer``, InfoBatch through ``InfoBatchTrainer``, same arguments. Held-out loss:
token-weighted NLL on the first 64 held-out rows. Samples are counted where the loss is computed (InfoBatch) and
as epochs x rows (full training). GSNR overhead: one optimizer step of 4 accumulated micro-batches of 2 x 32 tokens
on the same model, with and without the callback (measured every step, and every 10th step).
"""

from __future__ import annotations

import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import interleaved, make_rows, mean_sd, parse_args, write_result  # noqa: E402

from hf_effi.trainers import EffiTrainer, EffiTrainingArguments  # noqa: E402
from hf_effi.trainers.gsnr import GSNRCallback  # noqa: E402
from hf_effi.trainers.infobatch import InfoBatchArguments, InfoBatchTrainer  # noqa: E402
from hf_effi.utils import mean_loss  # noqa: E402

NAME = "infobatch"
CLAIM = (
    "InfoBatch trains on fewer samples over several epochs with held-out loss as full training's (3 seeds); "
    "GSNRCallback's step-time overhead."
)
FULL = "full data"


def variants(ratios: list[float]) -> dict[str, float | None]:
    return {FULL: None, **{f"infobatch r={r}": r for r in ratios}}


def train_once(task, train_rows, eval_rows, ratio, seed, *, epochs, batch, out) -> dict:
    common = dict(
        num_train_epochs=epochs, per_device_train_batch_size=batch, learning_rate=1e-3, weight_decay=0.1,
        warmup_steps=0.1, max_grad_norm=1.0, effi_optim="adamw", effi_schedule="cosine", seed=seed,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, logging_strategy="no",
        dataloader_num_workers=0,
    )  # fmt: skip
    model = task.make_model(seed=seed)
    if ratio is None:
        trainer = EffiTrainer(model=model, args=EffiTrainingArguments(out, **common), train_dataset=train_rows)
    else:
        args = InfoBatchArguments(out, infobatch_prune_ratio=ratio, infobatch_delta=0.875, **common)
        trainer = InfoBatchTrainer(model=model, args=args, train_dataset=train_rows)
    start = time.process_time()
    trainer.train()
    seconds = time.process_time() - start
    samples = epochs * len(train_rows) if ratio is None else trainer.infobatch_samples_trained
    return {
        "samples": samples,
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "final_lr": trainer.lr_scheduler.get_last_lr()[0],
        "cpu_s": seconds,
        "held_out_loss": mean_loss(model, eval_rows, batch_size=16),
        "plan": getattr(getattr(trainer, "infobatch_sampler", None), "history", None),
    }


def gsnr_overhead(task, *, micro: int, seq: int, accumulation: int, repeats: int) -> dict:
    """Seconds per optimizer step (forward + backward of each micro-batch, the callback's hooks and reduction)."""
    model = task.make_model(seed=0)
    ids = torch.randint(
        0, task.config.vocab_size, (accumulation, micro, seq), generator=torch.Generator().manual_seed(0)
    )
    args = types.SimpleNamespace(gradient_accumulation_steps=accumulation)
    callbacks = {"no GSNR": None, "GSNR every step": GSNRCallback(every_n_steps=1),
                 "GSNR every 10th step": GSNRCallback(every_n_steps=10)}  # fmt: skip
    states = {name: types.SimpleNamespace(global_step=0, log_history=[]) for name in callbacks}
    for cb in callbacks.values():
        if cb is not None:
            cb.on_train_begin(args, None, None, model=model)

    def step(name: str) -> None:
        cb, state = callbacks[name], states[name]
        if cb is not None:
            cb.on_step_begin(args, state, None)
        for i in range(accumulation):
            (model(input_ids=ids[i], labels=ids[i]).loss / accumulation).backward()
        if cb is not None:
            cb.on_pre_optimizer_step(args, state, None)
        model.zero_grad(set_to_none=True)
        state.global_step += 1

    # each call is one step; the every-10th variant is measured over 10-step blocks so its mean includes one measure
    fns = {name: (lambda name=name: step(name)) for name in callbacks if name != "GSNR every 10th step"}
    fns["GSNR every 10th step"] = lambda: [step("GSNR every 10th step") for _ in range(10)]
    timing = interleaved(fns, repeats=repeats, warmup=1)
    per_step = {name: timing["cpu_median"][name] / (10 if "10th" in name else 1) for name in fns}
    wall = {name: timing["median"][name] / (10 if "10th" in name else 1) for name in fns}
    return {"cpu": per_step, "wall": wall, "measurements": {n: len(c.history) for n, c in callbacks.items() if c}}


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    from hf_effi.testing import pretrain_task

    smoke = args.smoke
    if smoke:
        n_rows, seq, epochs, batch, eval_n, seeds, ratios = 16, 16, 4, 4, 8, [0], [0.5]
    else:
        n_rows, seq, epochs, batch, eval_n, seeds, ratios = 96, 32, 8, 8, 64, [0, 1, 2], [0.5, 0.75]
    task = pretrain_task(seq_len=seq)
    if smoke:  # a 2-layer, 64-wide model of the same vocabulary: seconds, not minutes
        task.config.update({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "head_dim": 16})
    train_rows = task.train_dataset.select(range(n_rows))
    eval_rows = task.eval_dataset.select(range(min(eval_n, len(task.eval_dataset))))
    names = variants(ratios)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as out:
        for seed in seeds:
            for name, ratio in names.items():
                runs[name].append(
                    train_once(task, train_rows, eval_rows, ratio, seed, epochs=epochs, batch=batch, out=out)
                )
                r = runs[name][-1]
                print(f"seed {seed} {name}: loss {r['held_out_loss']:.4f}, {r['samples']} samples, "
                      f"{r['steps']} steps, {r['cpu_s']:.0f} s", flush=True)  # fmt: skip

    def stat(key):
        pairs = {name: mean_sd([r[key] for r in rs]) for name, rs in runs.items()}
        return {n: m for n, (m, _) in pairs.items()}, {n: s for n, (_, s) in pairs.items()}

    loss_mean, loss_sd = stat("held_out_loss")
    samples, _ = stat("samples")
    steps, _ = stat("steps")
    cpu_mean, cpu_sd = stat("cpu_s")
    rows = make_rows("forward/backward samples", "count", samples, FULL)
    rows += make_rows("optimizer steps", "count", steps, FULL)
    rows += make_rows("held-out loss (mean over seeds)", "nats", loss_mean, FULL, sds=loss_sd)
    rows += make_rows("training CPU time (mean over seeds)", "s", cpu_mean, FULL, sds=cpu_sd)
    overhead = gsnr_overhead(task, micro=2, seq=seq, accumulation=2 if smoke else 4, repeats=1 if smoke else 7)
    rows += make_rows("GSNR: training-step CPU time, median", "s", overhead["cpu"], "no GSNR")
    rows += make_rows("GSNR: training-step wall time, median", "s", overhead["wall"], "no GSNR")

    full_sd = loss_sd[FULL]
    verdicts = {}
    for name in names:
        if name == FULL:
            continue
        saved = 1 - samples[name] / samples[FULL]
        gap = loss_mean[name] - loss_mean[FULL]
        noise = 2 * max(full_sd, loss_sd[name])
        verdicts[name] = {
            "samples_saved": saved,
            "loss_gap": gap,
            "loss_gap_relative": gap / loss_mean[FULL],
            "within_1pct_or_2sd": gap <= max(0.01 * loss_mean[FULL], noise),
            "saves_25pct": saved >= 0.25,
        }
    payload = {
        "claim": CLAIM,
        "config": {
            "task": "pretrain_task",
            "model_parameters": sum(p.numel() for p in task.make_model(seed=0).parameters()),
            "train_rows": n_rows,
            "seq_len": seq,
            "epochs": epochs,
            "batch": batch,
            "seeds": seeds,
            "eval_rows": len(eval_rows),
            "prune_ratios": ratios,
            "delta": 0.875,
            "optimizer": "adamw lr 1e-3 wd 0.1, warmup 10% + cosine, clip 1.0",
            "task_info": task.info,
        },  # fmt: skip
        "rows": rows,
        "notes": (
            "Samples saved / held-out loss gap vs full data (target: >= 25% fewer samples, loss within 1% or 2 sd): "
            + "; ".join(
                f"{n}: {v['samples_saved']:.1%} saved, loss {v['loss_gap_relative']:+.2%} "
                f"({'within' if v['within_1pct_or_2sd'] else 'outside'} 1%/2 sd)"
                for n, v in verdicts.items()
            )
            + ". InfoBatch here prunes exactly floor(r * N/2) rows (rounded to whole batches) per pruning epoch, "
            "fixed in advance so the LR schedule ends with training; both runs' schedules end at their last step. "
            "CPU times were taken on a 2-core machine shared with other jobs (inflated, noisy). GSNR overhead: "
            "ratio_of_sums reduction, per-layer groups; 'every 10th step' is the mean step time over 10-step blocks."
        ),
        "details": {"runs": runs, "verdicts": verdicts, "gsnr_measurements": overhead["measurements"]},
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
