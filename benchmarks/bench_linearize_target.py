"""LoLCATs on SmolLM2-135M-Instruct at the quality budget (<= 200k training tokens, both stages together): held-out
perplexity on documentation and code of the original model, the untrained swap, after attention transfer, after
transfer + LoRA, and the fair baseline (the softmax model given the same LoRA steps on the same data), plus the
held-out loss per 64-position bucket of the fair baseline and the linearized model, which shows where the gap lies.

Two runs of ``recipes/linearize.py --config recipes/configs/linearize_lolcats_200k.yaml`` (subprocesses): as
configured (16 attention sinks, fair baseline trained), then the same with ``--sinks 0`` (the paper's hybrid; no
second baseline: same seed, data and LoRA steps, so the first run's baseline is the fair one for both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import make_rows, parse_args, write_result  # noqa: E402

NAME = "linearize_target"
CLAIM = ("lolcats reaches <= 1.10x the perplexity of the fair baseline (softmax + the same LoRA steps) on held-out "
         "documentation and code with <= 200k training tokens.")
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "configs" / "linearize_lolcats_200k.yaml"
BASELINE = "softmax + LoRA (fair baseline)"
FINAL = "after transfer + LoRA"


def run_recipe(out: Path, extra: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "recipes" / "linearize.py"), "--config", str(CONFIG), "--output_dir", str(out),
           *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"linearize recipe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads((out / "results.json").read_text())


def stage_label(stage: str, sinks: int) -> str:
    """Stages of the linearized model carry their sink count; the original and the baseline do not."""
    return stage if stage in ("original", BASELINE) else f"{stage} (sinks {sinks})"


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    extra = []
    if args.smoke:
        extra = ["--model", "tiny", "--seq_len", "32", "--train_tokens", "128", "--transfer_tokens", "64",
                 "--eval_tokens", "64", "--window", "8", "--sinks", "2", "--position_bucket", "8",
                 "--save_steps", "100"]
    work = Path(tempfile.mkdtemp(prefix="hf_effi_linearize_"))
    result = run_recipe(work / "configured", extra, args.threads)
    plain = run_recipe(work / "no_sinks", [*extra, "--sinks", "0", "--train_baseline", "false"], args.threads)
    for r in (result, plain):
        r.pop("output_dir")  # a temporary folder of this machine: not a result
    runs = [(result["sinks"], result), (0, plain)]
    rows = []
    for domain in ("docs", "code"):
        values = {stage_label(stage, sinks): by[domain] for sinks, r in runs for stage, by in r["perplexity"].items()
                  if not (r is plain and stage in ("original", BASELINE))}
        rows += make_rows(f"held-out perplexity ({domain})", "ppl", values, BASELINE)
    bucket = result["loss_by_position"]["bucket"]
    curves = [(BASELINE, result), (stage_label(FINAL, result["sinks"]), result), (stage_label(FINAL, 0), plain)]
    for domain in ("docs", "code"):
        for label, r in curves:
            stage = BASELINE if label == BASELINE else FINAL
            curve = r["loss_by_position"][stage][domain]
            values = {f"{label}, positions {i * bucket}-{min((i + 1) * bucket, result['seq_len'] - 1) - 1}": v
                      for i, v in enumerate(curve)}
            rows += make_rows(f"held-out loss by position ({domain})", "nats", values, None)
    tokens = {"attention transfer": result["transfer_tokens"], "LoRA": result["lora_tokens"],
              "total": result["transfer_tokens"] + result["lora_tokens"]}
    rows += make_rows("training tokens", "count", tokens, None)
    rows += make_rows("recipe wall time", "s", {f"sinks {result['sinks']} (baseline included)": result["wall_seconds"],
                                                "sinks 0 (no baseline)": plain["wall_seconds"]}, None)
    settings = {k: result[k] for k in ("model", "method", "sinks", "seq_len", "batch_size", "transfer_tokens",
                                       "lora_tokens",
                                       "transfer_steps", "lora_steps", "transfer_lr", "lora_lr", "lora_r",
                                       "lora_alpha", "lora_train_linear", "eval_tokens", "corpus")}
    payload = {
        "claim": CLAIM,
        "config": {**settings, "recipe config": CONFIG.name},
        "rows": rows,
        "notes": (
            "Ratios are perplexity / the fair baseline's on the same held-out text (documents never seen in training; "
            "'code' is out of the training domain). One seed. Stage 1 trains the feature maps and window weights to "
            "each layer's own softmax output (MSE x 1000); stage 2 trains LoRA r=8 on q/k/v/o and, with "
            "lora_train_linear, the feature maps and window weights too (next-token loss); the fair baseline gets the "
            "same LoRA steps. Position p's loss is that of predicting token p+1; positions below the window (64) see "
            "only the softmax window, so any gap there comes from LoRA, not from linear attention. 'sinks N': the "
            "first N tokens of each row stay under exact softmax after leaving the window (StreamingLLM's attention "
            "sinks; an hf_effi option, not in LoLCATs); 'sinks 0' is the paper's hybrid."
        ),
        "details": {"results": result, "results_sinks_0": plain},
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
