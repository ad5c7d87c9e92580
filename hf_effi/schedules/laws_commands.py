"""``hf-effi suggest`` (Step Law lr and batch size) and ``hf-effi predict-loss`` (the annealing loss-curve law).

- ``hf-effi suggest --params N --tokens D [--seq-len L] [--json]``: Li et al., arXiv 2503.04715.
- ``hf-effi predict-loss --log run.jsonl [--log run2.jsonl] --schedule NAME [--steps N] [--warmup W]
  [--peak-lr LR] [--args k=v ...] -o out.png``: fit ``L = L0 + A*S1^-alpha - C*S2`` (Tissue et al.,
  arXiv 2408.11029) on the logged runs and predict the curve of the named schedule; plot logs, fits and prediction.

Both register on import of this module (``hf_effi.schedules`` imports it so they exist when ``hf-effi`` starts).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from hf_effi.cli import register_command
from hf_effi.schedules.laws import fit_loss_curve, predict_loss_curve, read_loss_log, step_law

__all__ = ["parse_count", "predict_loss", "suggest"]

_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str, option: str) -> float:
    """``"135M"``, ``"2.5B"``, ``"1e9"``, ``"20000000"`` -> a positive float."""
    raw = text.strip().replace("_", "").replace(",", "")
    scale = _SUFFIXES.get(raw[-1:].lower(), 1.0) if raw else 1.0
    number = raw[:-1] if scale != 1.0 else raw
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a count; write e.g. {option} 1.3e8 or {option} 130M") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option} must be positive, got {text!r}")
    return value


# --- hf-effi suggest -------------------------------------------------------------------------------------------------


def _configure_suggest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, metavar="N", help="non-embedding parameters, e.g. 1e8 or 100M")
    parser.add_argument("--tokens", required=True, metavar="D", help="training tokens, e.g. 2e9 or 2B")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence: also give the batch in rows")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def suggest(args: argparse.Namespace) -> int:
    """Print Step Law's peak lr and batch size for ``--params`` and ``--tokens``."""
    s = step_law(parse_count(args.params, "--params"), parse_count(args.tokens, "--tokens"), seq_len=args.seq_len)
    if args.json:
        print(json.dumps(s.__dict__, indent=2))
        return 0
    print(
        f"Step Law (Li et al., arXiv 2503.04715) for N={s.n_params:.4g} non-embedding params, D={s.tokens:.4g} tokens:"
    )
    print(f"  peak learning rate   {s.lr:.3e}")
    print(f"  batch size           {s.batch_tokens:.4g} tokens")
    if s.seq_len is not None:
        print(f"                       {s.batch_sequences} sequences of {s.seq_len} tokens, {s.steps} optimizer steps")
    print("  (fitted for AdamW betas (0.9, 0.95), weight decay 0.1, warmup then cosine decay to a small final lr)")
    return 0


# --- hf-effi predict-loss ----------------------------------------------------------------------------------------


def _configure_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log",
        action="append",
        required=True,
        metavar="PATH",
        help="a run's log: .jsonl of {step, lr, loss} or a trainer_state.json; repeat for more runs",
    )
    parser.add_argument("--schedule", required=True, help="registered schedule to predict (see `hf-effi available`)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the predicted run (default: longest log)")
    parser.add_argument("--warmup", default="0", help="warmup steps (int) or fraction (float) of the predicted run")
    parser.add_argument("--peak-lr", type=float, default=None, help="peak lr of the predicted run (default: logs' max)")
    parser.add_argument("--args", nargs="*", default=[], metavar="K=V", help="the schedule's own arguments")
    parser.add_argument("--loss-key", default="loss", help="which logged value to fit (e.g. eval_loss)")
    parser.add_argument("--min-step", type=int, default=1, help="ignore log records before this step")
    parser.add_argument("--lam", type=float, default=0.999, help="annealing-momentum decay (paper: 0.999)")
    parser.add_argument("--huber-delta", type=float, default=0.01, help="Huber threshold of the fit, in nats")
    parser.add_argument("-o", "--output", default=None, help="PNG to draw logs, fits and the prediction into")
    parser.add_argument("--json", action="store_true", help="print the constants and predicted curve as JSON")


def _value(text: str):
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def _schedule_kwargs(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--args {pair!r} must look like NAME=VALUE, e.g. --args decay_ratio=0.2")
        out[key.strip()] = _value(value.strip())
    return out


def _schedule_lrs(name: str, steps: int, warmup, peak: float, kwargs: dict) -> np.ndarray:
    from hf_effi.schedules import make_scheduler

    scheduler = make_scheduler(name, torch.optim.SGD([torch.zeros(1)], lr=1.0), num_training_steps=steps,
                               warmup=warmup, **kwargs)  # fmt: skip
    return peak * np.asarray(scheduler.values(steps))  # update s (1-based) uses the multiplier of step s-1


def predict_loss(args: argparse.Namespace) -> int:
    """Fit the annealing law on ``--log`` runs, predict ``--schedule``, print (and plot) the result."""
    runs = [read_loss_log(path, args.loss_key) for path in args.log]
    print(f"fitting {len(runs)} run(s), {sum(r.steps.size for r in runs)} points ...", file=sys.stderr)
    params = fit_loss_curve(runs, lam=args.lam, huber_delta=args.huber_delta, min_step=args.min_step)
    steps = args.steps if args.steps is not None else max(int(r.steps[-1]) for r in runs)
    if steps <= 0:
        raise ValueError(f"--steps must be a positive number of optimizer steps, got {steps}")
    peak = args.peak_lr if args.peak_lr is not None else params.lr_scale
    if not peak > 0:
        raise ValueError(f"--peak-lr must be > 0, got {args.peak_lr}")
    warmup = _value(args.warmup)
    lrs = _schedule_lrs(args.schedule, steps, warmup, peak, _schedule_kwargs(args.args))
    curve = predict_loss_curve(params, lrs)
    fitted = [predict_loss_curve(params, r.lrs)[r.steps - 1] for r in runs]
    residuals = np.concatenate([(f - r.losses)[r.steps >= args.min_step] for f, r in zip(fitted, runs)])
    rmse = float(np.sqrt(np.nanmean(residuals**2)))  # over the fitted points
    if args.json:
        print(
            json.dumps(
                {
                    "params": params.to_dict(),
                    "fit_rmse": rmse,
                    "schedule": args.schedule,
                    "lrs": lrs.tolist(),
                    "predicted_loss": [None if math.isnan(v) else v for v in curve],
                }
            )
        )
    else:
        p = params
        print(
            f"fitted L = {p.L0:.4f} + {p.A:.4f} * S1^-{p.alpha:.4f} - {p.C:.4g} * S2   (lr unit {p.lr_scale:.3g}, "
            f"lam {p.lam}, fit RMSE {rmse:.4f})"
        )
        print(
            f"{args.schedule} over {steps} steps at peak lr {peak:.3g}: predicted final {args.loss_key} {curve[-1]:.4f}"
        )
    if args.output:
        _plot(Path(args.output), runs, fitted, args.log, curve, args.schedule, args.loss_key)
        print(args.output)
    return 0


def _plot(path, runs, fitted, names, curve, schedule, loss_key) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, fit, name in zip(runs, fitted, names):
        points = ax.plot(run.steps, run.losses, ".", ms=3, alpha=0.5, label=f"{Path(name).stem} (logged)")
        ax.plot(run.steps, fit, "-", color=points[0].get_color(), lw=1, label=f"{Path(name).stem} (law)")
    ax.plot(np.arange(1, curve.size + 1), curve, "k-", lw=2, label=f"{schedule} (predicted)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(loss_key)
    ax.set_title("loss-curve law with lr annealing (arXiv 2408.11029)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


register_command("suggest", "Step Law peak learning rate and batch size from parameters and tokens",
                 _configure_suggest, suggest)  # fmt: skip
register_command("predict-loss", "fit the lr-annealing loss law on run logs and predict another schedule's curve",
                 _configure_predict, predict_loss)  # fmt: skip
