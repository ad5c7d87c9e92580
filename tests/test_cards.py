"""Model cards: Hub front matter, exactly the measured metrics, a loading snippet that runs, clear errors."""

import json

import pytest
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from hf_effi.cards import available_templates, checkpoint_kind, write_model_card

CARD_ARGS = dict(
    base_model=None,
    method="adafactor",
    summary="A tiny test model.",
    settings={"lr": 1e-3, "betas": [0.9, 0.95], "schedule": "wsd"},
    data={"dataset": "pydoc topics", "tokens": 1_234_567},
    metrics={"eval_loss": 3.25, "step_time": (0.125, "s"), "state_bytes": 4096},
)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n")[1].split("\n## ")[0]


def _table_rows(section: str) -> list[list[str]]:
    lines = [ln for ln in section.strip().splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def _fake_checkpoint(folder, config=None, adapter=None):
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if adapter is not None:
        (folder / "adapter_config.json").write_text(json.dumps(adapter))
    return folder


def _tiny_llama():
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64)
    return LlamaForCausalLM(config)


def test_templates_are_shipped():
    assert {"default", "peft", "linearized"} <= set(available_templates())


def test_front_matter_and_sections_for_plain_model(tmp_path):
    folder = _fake_checkpoint(tmp_path / "run", config={"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    card = write_model_card(folder, **{**CARD_ARGS, "base_model": "org/base"}, tags=["pretraining", "adafactor"])
    text = card.read_text()
    assert card == folder / "README.md"
    meta = _front_matter(text)
    assert meta == {"library_name": "transformers", "base_model": "org/base",
                    "tags": ["hf_effi", "adafactor", "pretraining"], "pipeline_tag": "text-generation"}
    assert "**adafactor**" in _section(text, "Method")
    assert _table_rows(_section(text, "Training settings")) == [["lr", "0.001"], ["betas", "`[0.9, 0.95]`"],
                                                                ["schedule", "wsd"]]
    assert "1,234,567" in _section(text, "Data")
    assert "import hf_effi" not in text
    assert "transformers 5." in _section(text, "Software")


def test_metrics_table_holds_exactly_the_given_metrics(tmp_path):
    folder = _fake_checkpoint(tmp_path / "run")
    text = write_model_card(folder, **CARD_ARGS).read_text()
    rows = _table_rows(_section(text, "Measured results"))
    assert rows == [["eval_loss", "3.25", ""], ["step_time", "0.125", "s"], ["state_bytes", "4096", ""]]
    empty = write_model_card(folder, **{**CARD_ARGS, "metrics": {}}).read_text()
    assert _table_rows(_section(empty, "Measured results")) == []
    assert "Nothing was measured." in empty


def test_no_pipeline_tag_without_a_known_head(tmp_path):
    folder = _fake_checkpoint(tmp_path / "run", config={"architectures": ["LlamaModel"], "model_type": "llama"})
    meta = _front_matter(write_model_card(folder, **CARD_ARGS).read_text())
    assert "pipeline_tag" not in meta and "base_model" not in meta


def test_peft_adapter_card(tmp_path):
    adapter = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "org/base"}
    folder = _fake_checkpoint(tmp_path / "adapter", adapter=adapter)
    assert checkpoint_kind(folder) == "peft"
    text = write_model_card(folder, **{**CARD_ARGS, "method": "lora"}).read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "peft" and meta["base_model"] == "org/base"
    assert "adapter" in _section(text, "Method")  # the peft template was picked for "default"
    load = _section(text, "How to load")
    assert 'AutoModelForCausalLM.from_pretrained("org/base")' in load and "PeftModel.from_pretrained" in load
    assert "import hf_effi" not in load  # LoRA is peft's own


def test_hf_effi_tuner_and_linearized_snippets_import_hf_effi(tmp_path):
    adapter = {"peft_type": "NOT_A_PEFT_BUILTIN", "task_type": "CAUSAL_LM", "base_model_name_or_path": "b"}
    folder = _fake_checkpoint(tmp_path / "adapter", adapter=adapter)
    assert "import hf_effi" in _section(write_model_card(folder, **CARD_ARGS).read_text(), "How to load")
    lin = _fake_checkpoint(tmp_path / "lin", config={"model_type": "hf_effi_linear",
                                                     "architectures": ["HfEffiLinearForCausalLM"]})
    assert checkpoint_kind(lin) == "linearized"
    text = write_model_card(lin, **{**CARD_ARGS, "method": "lolcats", "base_model": "org/base"}).read_text()
    assert "linear-attention" in _section(text, "Method")
    assert "import hf_effi" in _section(text, "How to load")


def test_peft_adapter_without_any_base_model_is_an_error(tmp_path):
    folder = _fake_checkpoint(tmp_path / "adapter", adapter={"peft_type": "LORA", "task_type": "CAUSAL_LM"})
    with pytest.raises(ValueError, match="base_model"):
        write_model_card(folder, **CARD_ARGS)


def test_loading_snippet_runs(tmp_path, monkeypatch):
    model = _tiny_llama()
    model.save_pretrained(tmp_path / "model")
    text = write_model_card(tmp_path / "model", **CARD_ARGS).read_text()
    code = _section(text, "How to load").split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code, scope)  # the card's own snippet, run from the folder that holds the checkpoint
    assert type(scope["model"]).__name__ == "LlamaForCausalLM"


def test_extra_sections_and_custom_template(tmp_path):
    folder = _fake_checkpoint(tmp_path / "run")
    text = write_model_card(folder, **CARD_ARGS, extra_sections={"Limitations": "Toy model."}).read_text()
    assert _section(text, "Limitations").strip() == "Toy model."
    custom = tmp_path / "mine.md"
    custom.write_text("# ${title} by $method\n\n${metrics_table}\n")
    text = write_model_card(folder, **CARD_ARGS, template=custom).read_text()
    assert "# run by adafactor" in text and "| eval_loss | 3.25 |  |" in text


@pytest.mark.parametrize(
    "override, error, match",
    [
        ({"metrics": {"eval_loss": "3.2"}}, TypeError, "metrics\\['eval_loss'\\] must be a number"),
        ({"metrics": {"converged": True}}, TypeError, "converged"),
        ({"metrics": {"step_time": (0.1, 5)}}, TypeError, "unit must be a string"),
        ({"metrics": [("eval_loss", 3.2)]}, TypeError, "metrics must be a dict"),
        ({"tags": "pretraining"}, TypeError, "tags must be a list"),
        ({"settings": ["lr"]}, TypeError, "settings must be a dict"),
        ({"method": ""}, ValueError, "method must be a non-empty string"),
        ({"template": "fancy"}, ValueError, "default, linearized, peft"),
    ],
    ids=["metric-str", "metric-bool", "unit-int", "metrics-list", "tags-str", "settings-list", "method-empty",
         "template-unknown"],
)
def test_bad_input_is_a_clear_error(tmp_path, override, error, match):
    folder = _fake_checkpoint(tmp_path / "run")
    with pytest.raises(error, match=match):
        write_model_card(folder, **{**CARD_ARGS, **override})
    assert not (folder / "README.md").exists()


def test_missing_directory_and_bad_placeholder(tmp_path):
    with pytest.raises(ValueError, match="output_dir=.*not an existing directory"):
        write_model_card(tmp_path / "missing", **CARD_ARGS)
    folder = _fake_checkpoint(tmp_path / "run")
    custom = tmp_path / "bad.md"
    custom.write_text("# $titel\n")
    with pytest.raises(ValueError, match="placeholder.*titel"):
        write_model_card(folder, **CARD_ARGS, template=custom)
