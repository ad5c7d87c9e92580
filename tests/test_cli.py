"""The hf-effi console script: subcommand registration, `available`, `card`, and the installed entry point."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import hf_effi
from hf_effi import cli


@pytest.fixture
def commands(monkeypatch):
    """A private copy of the command registry, so registrations made by a test do not outlive it."""
    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))
    return cli._COMMANDS


def test_help_lists_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "available" in out and "card" in out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_registered_command_runs(commands, capsys):
    def configure(parser):
        parser.add_argument("model_dir")
        parser.add_argument("--top", type=int, default=3)

    def run(args):
        print(f"{args.model_dir}:{args.top}")
        return 7

    cli.register_command("echo-test", "print the arguments back", configure, run)
    assert "echo-test" in cli.registered_commands()
    assert cli.main(["echo-test", "some/dir", "--top", "5"]) == 7
    assert capsys.readouterr().out.strip() == "some/dir:5"
    assert cli.main(["--help"]) == 0
    assert "print the arguments back" in capsys.readouterr().out


def test_command_errors_are_one_line(commands, capsys):
    def run(args):
        raise ValueError("rank=0 must be positive; pass --rank 8")

    cli.register_command("fail-test", "always fails", lambda parser: None, run)
    assert cli.main(["fail-test"]) == 1
    assert capsys.readouterr().err.strip() == "hf-effi fail-test: error: rank=0 must be positive; pass --rank 8"


@pytest.mark.parametrize(
    "name, configure, run, error, match",
    [
        ("available", lambda p: None, lambda a: 0, ValueError, "already registered"),
        ("Has Space", lambda p: None, lambda a: 0, ValueError, "lower-case"),
        ("ok", None, lambda a: 0, TypeError, "configure"),
        ("ok", lambda p: None, "run", TypeError, "run"),
    ],
    ids=["duplicate", "bad-name", "configure-not-callable", "run-not-callable"],
)
def test_bad_registration(commands, name, configure, run, error, match):
    with pytest.raises(error, match=match):
        cli.register_command(name, "help", configure, run)


def test_available_table_lists_every_name(capsys):
    assert cli.main(["available"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["FAMILY", "NAME", "DESCRIPTION"]
    found = hf_effi.available()
    rows = {tuple(line.split()[:2]) for line in lines[1:]}
    assert rows == {(family, name) for family, entries in found.items() for name in entries}
    assert {"adamw", "adafactor"} <= {name for _, name in rows}
    # columns are aligned: every description starts at the same offset
    starts = {line.index(line.split()[2], len(line.split()[0]) + len(line.split()[1]) + 2) for line in lines[1:]}
    assert len(starts) == 1


def test_available_json_and_family(capsys):
    assert cli.main(["available", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(hf_effi.available()))
    assert cli.main(["available", "--json", "--family", "schedules"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"schedules"}
    assert cli.main(["available", "--family", "nope"]) == 1
    assert "valid families" in capsys.readouterr().err


def test_card_command_writes_the_measured_metrics(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    argv = ["card", str(tmp_path / "ckpt"), "--method", "adafactor", "--base-model", "org/base",
            "--metric", "eval_loss=3.5", "--metric", "step_time=0.25:s", "--setting", "lr=0.001",
            "--data", "tokens=2048", "--tag", "demo"]
    assert cli.main(argv) == 0
    card = Path(capsys.readouterr().out.strip())
    text = card.read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["base_model"] == "org/base" and meta["tags"] == ["hf_effi", "adafactor", "demo"]
    assert "| eval_loss | 3.5 |  |" in text and "| step_time | 0.25 | s |" in text and "| lr | 0.001 |" in text
    assert "2,048" in text


@pytest.mark.parametrize("metric", ["eval_loss=low", "eval_loss", "=3"])
def test_card_command_rejects_bad_metrics(tmp_path, capsys, metric):
    (tmp_path / "ckpt").mkdir()
    assert cli.main(["card", str(tmp_path / "ckpt"), "--method", "sgd", "--metric", metric]) == 1
    assert "--metric" in capsys.readouterr().err
    assert not (tmp_path / "ckpt" / "README.md").exists()


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "hf-effi"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "available" in result.stdout and "card" in result.stdout


def test_trainer_family_commands_register_when_the_cli_runs():
    import subprocess
    import sys

    code = "import sys; from hf_effi import cli; sys.exit(cli.main(['--help']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "spectrum" in proc.stdout, proc.stdout + proc.stderr
