"""``hf-effi schedule plot``: draw the learning rate (and momentum, where a schedule drives it) of registered
schedules over a run, several on one figure.

    hf-effi schedule plot cosine wsd rex --steps 1000 --warmup 50 -o schedules.png
    hf-effi schedule plot wsd --steps 1000 --args decay_type=exponential floor=0.1 -o wsd.png
    hf-effi schedule plot power --steps 1000 --args batch_size=256 seq_len=2048 --lr 0.02 -o power.png
    hf-effi schedule plot linear refined --steps 500 --log run1_norms.jsonl -o refined.png

``--args KEY=VALUE`` goes to every named schedule; ``NAME.KEY=VALUE`` to that schedule only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hf_effi.cli import register_command
from hf_effi.schedules.factory import SCHEDULES, make_scheduler
from hf_effi.schedules.refined import NORM_TYPES, refine

__all__ = ["plot_schedules"]


def _value(text: str):
    import yaml

    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def _split_args(items: list[str], names: list[str]) -> dict[str, dict]:
    per_name: dict[str, dict] = {name: {} for name in names}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--args {item!r} must look like KEY=VALUE or NAME.KEY=VALUE, e.g. --args floor=0.1")
        key, value = key.strip(), _value(raw.strip())
        target, dot, sub = key.partition(".")
        if dot:
            if target not in per_name:
                raise ValueError(f"--args {item!r} is for schedule {target!r}, which is not plotted ({names})")
            per_name[target][sub] = value
        else:
            for name in names:
                per_name[name][key] = value
    return per_name


def plot_schedules(
    names: list[str],
    path: str | Path,
    *,
    num_training_steps: int,
    warmup: int | float = 0,
    lr: float = 1.0,
    schedule_kwargs: dict[str, dict] | None = None,
) -> Path:
    """Draw the lr of each named schedule (and beta1/momentum in a second panel when one drives it) to a PNG.

    ``schedule_kwargs`` maps a name to its arguments. Each curve covers steps ``0 .. num_training_steps``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not names:
        raise ValueError("name at least one schedule, e.g. hf-effi schedule plot cosine --steps 100 -o out.png")
    curves, momenta = {}, {}
    for name in names:
        param = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.AdamW([param], lr=lr)
        scheduler = make_scheduler(
            name,
            optimizer,
            num_training_steps=num_training_steps,
            warmup=warmup,
            **(schedule_kwargs or {}).get(name, {}),
        )
        curves[name] = [lr * m for m in scheduler.values(num_training_steps + 1)]
        momentum = scheduler.momentum_values(num_training_steps + 1)
        if momentum is not None:
            momenta[name] = momentum
    rows = 2 if momenta else 1
    fig, axes = plt.subplots(rows, 1, figsize=(7, 3.5 * rows), sharex=True, squeeze=False)
    for name, values in curves.items():
        axes[0][0].plot(range(len(values)), values, label=name)
    axes[0][0].set_ylabel("learning rate" if lr != 1.0 else "lr multiplier (x peak)")
    axes[0][0].legend()
    if momenta:
        for name, values in momenta.items():
            axes[1][0].plot(range(len(values)), values, label=name)
        axes[1][0].set_ylabel("momentum / beta1")
        axes[1][0].legend()
    axes[-1][0].set_xlabel("optimizer step")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="schedule_command", metavar="ACTION", title="actions")
    plot = sub.add_parser(
        "plot",
        help="draw the learning rate of one or more schedules over a run to a PNG",
        description="Draw the learning rate of registered schedules over NUM_STEPS optimizer steps, on one figure "
        "(beta1/momentum in a second panel when a schedule such as one_cycle drives it). Schedules: "
        + ", ".join(SCHEDULES)
        + ".",
    )
    plot.add_argument("names", nargs="+", metavar="NAME", help="schedule names (see `hf-effi available`)")
    plot.add_argument("--steps", type=int, required=True, help="num_training_steps of the run (optimizer steps)")
    plot.add_argument("--warmup", type=float, default=0, help="warmup steps (>= 1) or fraction of steps (< 1)")
    plot.add_argument("--lr", type=float, default=1.0, help="peak lr (the optimizer's); 1.0 plots multipliers")
    plot.add_argument(
        "--args",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="schedule arguments, for every named schedule or NAME.KEY=VALUE for one, e.g. wsd.decay_type=linear",
    )
    plot.add_argument("--log", default=None, help="GradNormLogger JSONL of a previous run, feeding 'refined'")
    plot.add_argument("--norm", default="l1", choices=NORM_TYPES, help="refined: l1 (Adam-type) or l2 (SGD)")
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")


def _run(args: argparse.Namespace) -> int:
    if args.schedule_command != "plot":
        raise ValueError("name an action: hf-effi schedule plot NAME [NAME ...] --steps N -o out.png")
    names = [SCHEDULES.get(name).name for name in args.names]  # unknown names list the valid ones
    if args.steps is None or args.steps <= 0:
        raise ValueError(f"--steps={args.steps} must be a positive number of optimizer steps")
    warmup = int(args.warmup) if args.warmup >= 1 or args.warmup == 0 else float(args.warmup)
    if args.warmup >= 1 and args.warmup != int(args.warmup):
        raise ValueError(f"--warmup={args.warmup}: give whole steps (>= 1) or a fraction in [0, 1)")
    kwargs = _split_args(args.args, names)
    if "refined" in names:
        if args.log is None and "grad_norms" not in kwargs["refined"]:
            raise ValueError("'refined' needs a previous run's gradient norms: pass --log NORMS.jsonl")
        if args.log is not None:
            kwargs["refined"] = {**refine(args.log, norm=args.norm), **kwargs["refined"]}
    elif args.log is not None:
        raise ValueError("--log feeds the 'refined' schedule; add refined to the names or drop --log")
    path = plot_schedules(
        names, args.output, num_training_steps=args.steps, warmup=warmup, lr=args.lr, schedule_kwargs=kwargs
    )
    print(path)
    return 0


register_command(
    "schedule", "learning-rate schedule tools: `hf-effi schedule plot NAME ...` draws them", _configure, _run
)
