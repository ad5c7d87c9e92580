"""Shared helpers for every ``benchmarks/bench_*.py``: arguments, machine description, interleaved timing,
ratios, and the one JSON schema that ``render_results.py`` turns into ``RESULTS.md``.

A result file ``<out>/<name>.json`` holds::

    {"schema": 1, "name": str, "claim": str, "machine": {...}, "smoke": bool, "date": "YYYY-MM-DD",
     "config": {...}, "rows": [{"variant", "metric", "value", "unit", "baseline", "ratio", ["sd"]}],
     "notes": str, "details": {...}}

Each row is one measured number. ``baseline`` names the variant it is compared with (``None`` for no
comparison) and ``ratio`` is ``value / baseline's value`` for the same metric, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RESULTS_DIR",
    "ROW_KEYS",
    "SCHEMA_VERSION",
    "interleaved",
    "machine_info",
    "make_rows",
    "mean_sd",
    "parse_args",
    "ratio",
    "validate_result",
    "write_result",
]

SCHEMA_VERSION = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOP_KEYS = ("schema", "name", "claim", "machine", "smoke", "date", "config", "rows", "notes", "details")
ROW_KEYS = ("variant", "metric", "value", "unit", "baseline", "ratio")
UNITS = ("bytes", "bytes/param", "s", "x", "tokens/s", "nats", "ppl", "count")


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """``--smoke`` (seconds-long run, results to a fresh temp dir unless ``--out``), ``--out``, ``--threads``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few repeats: checks the script runs")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"result folder (default {RESULTS_DIR}; smoke: a temp dir)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="hf_effi_bench_smoke_")) if args.smoke else RESULTS_DIR
    if args.threads < 1:
        parser.error(f"--threads={args.threads} must be at least 1")
    torch.set_num_threads(args.threads)
    return args


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, core count, threads, library versions, GPU name if any.
    Deliberately no hostname or user name."""
    import transformers

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Time each variant ``repeats`` times, alternating variants within every repeat (and reversing the order on
    odd repeats) so drift in machine load hits all variants alike.

    Records wall time (``perf_counter``) and process CPU time (``process_time``, all threads of this process): on
    a machine shared with other jobs, CPU time is the steadier one, since time spent descheduled is not counted.
    Returns ``{"median", "samples", "cpu_median", "cpu_samples"}``, each keyed by variant, in seconds. ``sync``
    (e.g. ``torch.cuda.synchronize``) runs before each clock read.
    """
    if not fns:
        raise ValueError("fns is empty; pass {'variant name': zero-argument callable, ...}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    sync = sync or (lambda: None)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        "median": {n: statistics.median(s) for n, s in wall.items()},
        "samples": wall,
        "cpu_median": {n: statistics.median(s) for n, s in cpu.items()},
        "cpu_samples": cpu,
    }


def ratio(value: float, baseline: float) -> float | None:
    """``value / baseline``; ``None`` when the baseline is 0 (no meaningful ratio)."""
    return None if baseline == 0 else value / baseline


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1) over seeds or repeats; sd is 0 for a single value."""
    if not values:
        raise ValueError("mean_sd needs at least one value")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def make_rows(
    metric: str, unit: str, values: dict[str, float], baseline: str | None, sds: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """One row per variant for one metric, each with its ratio to ``values[baseline]``."""
    if baseline is not None and baseline not in values:
        raise ValueError(f"baseline={baseline!r} is not one of the variants {sorted(values)}")
    rows = []
    for variant, value in values.items():
        row = {
            "variant": variant,
            "metric": metric,
            "value": value,
            "unit": unit,
            "baseline": baseline,
            "ratio": None if baseline is None else ratio(value, values[baseline]),
        }
        if sds is not None and variant in sds:
            row["sd"] = sds[variant]
        rows.append(row)
    return rows


def validate_result(payload: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first key or row that breaks the schema in the module docstring."""
    missing = [k for k in TOP_KEYS if k not in payload]
    if missing:
        raise ValueError(f"result is missing keys {missing}; a result needs {list(TOP_KEYS)}")
    if payload["schema"] != SCHEMA_VERSION:
        raise ValueError(f"schema={payload['schema']!r}, expected {SCHEMA_VERSION}")
    for key, kind in (("name", str), ("claim", str), ("notes", str), ("date", str), ("smoke", bool)):
        if not isinstance(payload[key], kind):
            raise ValueError(f"{key}={payload[key]!r} must be a {kind.__name__}")
    for key in ("machine", "config", "details"):
        if not isinstance(payload[key], dict):
            raise ValueError(f"{key} must be a dict, got {type(payload[key]).__name__}")
    datetime.date.fromisoformat(payload["date"])
    if not isinstance(payload["rows"], list) or not payload["rows"]:
        raise ValueError("rows must be a non-empty list of measured rows")
    variants = {row.get("variant") for row in payload["rows"] if isinstance(row, dict)}
    for i, row in enumerate(payload["rows"]):
        if not isinstance(row, dict) or any(k not in row for k in ROW_KEYS):
            raise ValueError(f"rows[{i}]={row!r} must be a dict with keys {list(ROW_KEYS)}")
        if (
            not isinstance(row["value"], (int, float))
            or isinstance(row["value"], bool)
            or not math.isfinite(row["value"])
        ):
            raise ValueError(f"rows[{i}].value={row['value']!r} must be a finite number")
        if row["unit"] not in UNITS:
            raise ValueError(f"rows[{i}].unit={row['unit']!r} must be one of {list(UNITS)}")
        if row["baseline"] is not None and row["baseline"] not in variants:
            raise ValueError(f"rows[{i}].baseline={row['baseline']!r} is not a variant of this result")
        if row["ratio"] is not None and not isinstance(row["ratio"], (int, float)):
            raise ValueError(f"rows[{i}].ratio={row['ratio']!r} must be a number or null")


def write_result(name: str, payload: dict[str, Any], out_dir: Path, *, smoke: bool) -> Path:
    """Complete ``payload`` (claim, rows, optional config/notes/details) with name, machine, date and schema,
    validate it, and write ``<out_dir>/<name>.json``. Returns the path."""
    full = {
        "schema": SCHEMA_VERSION,
        "name": name,
        "claim": payload.get("claim"),
        "machine": machine_info(),
        "smoke": smoke,
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "config": payload.get("config", {}),
        "rows": payload.get("rows"),
        "notes": payload.get("notes", ""),
        "details": payload.get("details", {}),
    }
    unknown = set(payload) - set(TOP_KEYS)
    if unknown:
        raise ValueError(f"payload has unknown keys {sorted(unknown)}; put extra data under 'details'")
    validate_result(full)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def llama_with_gradients(config: Any, batch: int, seq: int) -> torch.nn.Module:
    """A seeded ``LlamaForCausalLM(config)`` holding real gradients of one fixed batch (for optimizer-only timing)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()  # the optimizers only read these gradients
    return model


def measure_optimizer_steps(
    optimizers: dict[str, Any], n_params: int, repeats: int, baseline: str = "adamw"
) -> tuple[dict[str, int], dict[str, Any], list[dict[str, Any]]]:
    """State bytes (after one step that creates the state) and interleaved ``optimizer.step()`` times.

    Returns ``(state_bytes, timing, rows)``; the rows are state bytes, bytes per parameter, and the CPU and wall
    medians of ``step()``, each as a ratio to ``baseline``.
    """
    from hf_effi.utils.memory import optimizer_state_bytes

    for opt in optimizers.values():
        opt.step()
    state = {name: optimizer_state_bytes(opt) for name, opt in optimizers.items()}
    timing = interleaved({name: opt.step for name, opt in optimizers.items()}, repeats=repeats, warmup=1)
    rows = make_rows("optimizer state", "bytes", state, baseline)
    rows += make_rows("state per parameter", "bytes/param", {k: v / n_params for k, v in state.items()}, baseline)
    rows += make_rows("optimizer.step() CPU time, median", "s", timing["cpu_median"], baseline)
    rows += make_rows("optimizer.step() wall time, median", "s", timing["median"], baseline)
    return state, timing, rows


def llama_settings(config: Any, params: list[torch.Tensor], batch: int, seq: int, repeats: int) -> dict[str, Any]:
    """The ``config`` block of a benchmark result for a Llama measured on one ``[batch, seq]`` batch."""
    return {
        "model": "LlamaForCausalLM",
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "dtype": "float32",
        "parameters": sum(p.numel() for p in params),
        "parameter_tensors": len(params),
        "batch": [batch, seq],
        "repeats": repeats,
    }
