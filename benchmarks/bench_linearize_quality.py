"""Linearizing SmolLM2-135M-Instruct: held-out perplexity (documentation and code) of the original model, the
untrained swap, after attention transfer, after transfer + LoRA, and the fair baseline (the softmax model given the
same LoRA steps on the same data), for lolcats, hedgehog, based and liger at the recipe's default budget.

Each method is one run of ``recipes/linearize.py`` (a subprocess); the fair baseline is trained in the lolcats run.
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

NAME = "linearize_quality"
CLAIM = (
    "lolcats reaches <= 1.10x the perplexity of the fair baseline (softmax + the same LoRA steps) on held-out "
    "documentation and code with <= 200k training tokens; hedgehog, based and liger at the same budget beside it."
)
REPO = Path(__file__).resolve().parents[1]
METHODS = ("lolcats", "hedgehog", "based", "liger")


def run_recipe(method: str, out: Path, extra: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "recipes" / "linearize.py"), "--config",
           str(REPO / "recipes" / "configs" / f"linearize_{method}.yaml"), "--output_dir", str(out / method),
           "--train_baseline", "true" if method == "lolcats" else "false", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"linearize recipe ({method}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads((out / method / "results.json").read_text())


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    if args.smoke:
        methods = ("lolcats",)
        extra = ["--model", "tiny", "--seq_len", "32", "--train_tokens", "128", "--eval_tokens", "64",
                 "--batch_size", "2", "--window", "8", "--save_steps", "100"]
    else:
        methods, extra = METHODS, []
    work = Path(tempfile.mkdtemp(prefix="hf_effi_linearize_"))
    results = {m: run_recipe(m, work, extra, args.threads) for m in methods}
    for result in results.values():
        result.pop("output_dir")  # a temporary folder of this machine: not a result
    lolcats = results["lolcats"]
    baseline_name = "softmax + LoRA (fair baseline)"
    rows = []
    for domain in ("docs", "code"):
        values = {"original": lolcats["perplexity"]["original"][domain],
                  baseline_name: lolcats["perplexity"][baseline_name][domain]}
        for method, result in results.items():
            for stage in ("swapped, untrained", "after attention transfer", "after transfer + LoRA"):
                if stage in result["perplexity"]:
                    values[f"{method}: {stage}"] = result["perplexity"][stage][domain]
        rows += make_rows(f"held-out perplexity ({domain})", "ppl", values, baseline_name)
    tokens = {m: r["transfer_tokens"] + r["lora_tokens"] for m, r in results.items()}
    rows += make_rows("training tokens (transfer + LoRA)", "count", tokens, None)
    rows += make_rows("recipe wall time", "s", {m: r["wall_seconds"] for m, r in results.items()}, None)
    settings = {k: lolcats[k] for k in ("model", "seq_len", "train_tokens", "eval_tokens", "batch_size", "transfer_lr",
                                        "lora_lr", "lora_r", "lora_alpha", "transfer_steps", "lora_steps",
                                        "transfer_tokens", "lora_tokens")}
    payload = {
        "claim": CLAIM,
        "config": {**settings, "methods": list(methods), "training corpus": lolcats["corpus"]},
        "rows": rows,
        "notes": (
            "Ratios are perplexity / the fair baseline's on the same held-out text (documents never seen in training; "
            "'code' is out of the training domain). One seed. liger adds no parameters, so it has no transfer stage. "
            "Stage 1 trains only the feature maps and window weights (MSE x 1000 to the layer's own softmax output); "
            "stage 2 is LoRA r=8 on q/k/v/o. Both use the same tokens."
        ),
        "details": {"results": results},
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
