"""Reporting for the quickstart: the printed comparison table, its Markdown twin for model cards, the loss plot.

Every function takes the list of run dicts ``quickstart.train_one`` returns (keys ``optimizer``, ``eval_loss``,
``perplexity``, ``optimizer_state_bytes``, ``median_step_seconds``, ``median_optimizer_step_seconds``,
``loss_curve``) and reports only those measured values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_effi.utils import format_bytes

__all__ = ["HEADER", "baseline_name", "comparison_markdown", "format_table", "table_rows", "write_loss_plot"]

HEADER = ("optimizer", "held-out loss", "perplexity", "optimizer state", "state vs {base}", "step time",
          "optimizer.step()")


def baseline_name(runs: list[dict[str, Any]]) -> str:
    """The run the ratio column divides by: ``adamw`` when it ran, else the first run."""
    names = [run["optimizer"] for run in runs]
    return "adamw" if "adamw" in names else names[0]


def _ratio(value: int, base: int) -> str:
    return f"{value / base:.3f}x" if base else "n/a (baseline holds no state)"


def table_rows(runs: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and formatted cells, one row per run."""
    base = baseline_name(runs)
    base_bytes = next(run["optimizer_state_bytes"] for run in runs if run["optimizer"] == base)
    header = tuple(h.format(base=base) for h in HEADER)
    rows = [
        (
            run["optimizer"],
            f"{run['eval_loss']:.4f}",
            f"{run['perplexity']:.1f}",
            format_bytes(run["optimizer_state_bytes"]),
            _ratio(run["optimizer_state_bytes"], base_bytes),
            f"{run['median_step_seconds']:.3f} s",
            f"{run['median_optimizer_step_seconds']:.4f} s",
        )
        for run in runs
    ]
    return header, rows


def format_table(runs: list[dict[str, Any]]) -> str:
    """A plain-text table with aligned columns (names left, numbers right)."""
    header, rows = table_rows(runs)
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def comparison_markdown(runs: list[dict[str, Any]]) -> str:
    """The same table in Markdown, for the model cards."""
    header, rows = table_rows(runs)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_loss_plot(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Training loss against step for every run, the held-out loss as a marker at the last step; a PNG."""
    try:
        from matplotlib.figure import Figure  # a bare Figure: no pyplot, no global backend switch
    except ImportError as err:
        raise ImportError("the quickstart plot needs matplotlib: pip install matplotlib (or hf_effi[dev])") from err
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for run in runs:
        steps, losses = zip(*run["loss_curve"]) if run["loss_curve"] else ((), ())
        (curve,) = ax.plot(steps, losses, label=f"{run['optimizer']} (train)")
        ax.plot([run["steps"]], [run["eval_loss"]], "o", color=curve.get_color(),
                label=f"{run['optimizer']} held-out {run['eval_loss']:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("hf_effi quickstart: same model, data and schedule")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
