"""``hf-effi suggest`` and ``hf-effi predict-loss`` (hf_effi.schedules.laws_commands)."""

import json

import numpy as np
import pytest
import torch

import hf_effi.schedules.laws_commands as laws_commands
from hf_effi.cli import main
from hf_effi.schedules import make_scheduler
from hf_effi.schedules.laws import LossCurveParams, predict_loss_curve, step_law


def test_suggest_prints_step_law(capsys):
    assert main(["suggest", "--params", "100M", "--tokens", "2B", "--seq-len", "2048"]) == 0
    out = capsys.readouterr().out
    assert "2.537e-03" in out and "58 sequences of 2048 tokens" in out


def test_suggest_json_equals_the_library(capsys):
    assert main(["suggest", "--params", "1e9", "--tokens", "1e11", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = step_law(1e9, 1e11)
    assert got["lr"] == pytest.approx(want.lr) and got["batch_tokens"] == pytest.approx(want.batch_tokens)


@pytest.mark.parametrize("text,value", [("135M", 1.35e8), ("2.5b", 2.5e9), ("1e9", 1e9), ("20_000", 2e4), ("3k", 3e3)])
def test_parse_count(text, value):
    assert laws_commands.parse_count(text, "--params") == pytest.approx(value)


@pytest.mark.parametrize("argv,match", [
    (["suggest", "--params", "lots", "--tokens", "1e9"], "--params 'lots' is not a count"),
    (["suggest", "--params", "1e8", "--tokens", "-5"], "--tokens must be positive"),
    (["suggest", "--params", "1e8", "--tokens", "1e9", "--seq-len", "0"], "seq_len"),
])  # fmt: skip
def test_suggest_bad_input(argv, match, capsys):
    assert main(argv) == 1
    assert match in capsys.readouterr().err


TRUE = LossCurveParams(L0=3.0, A=2.0, alpha=0.45, C=0.004, lam=0.999, lr_scale=1e-3)


def _lrs(name, steps, warmup=10, **kw):
    sched = make_scheduler(
        name, torch.optim.SGD([torch.zeros(1)], lr=1.0), num_training_steps=steps, warmup=warmup, **kw
    )
    return 1e-3 * np.asarray(sched.values(steps))


def _write_log(path, lrs, seed):
    rng = np.random.default_rng(seed)
    losses = predict_loss_curve(TRUE, lrs) + rng.normal(0, 0.01, lrs.size)
    lines = [json.dumps({"step": s + 1, "lr": float(lrs[s]), "loss": float(losses[s])}) for s in range(lrs.size)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture()
def logs(tmp_path):
    return [_write_log(tmp_path / "constant.jsonl", _lrs("constant", 300), 0),
            _write_log(tmp_path / "cosine.jsonl", _lrs("cosine", 300), 1)]  # fmt: skip


def test_predict_loss_recovers_the_law_for_another_schedule(logs, tmp_path, capsys):
    png = tmp_path / "plot" / "wsd.png"
    argv = ["predict-loss", "--log", logs[0], "--log", logs[1], "--schedule", "wsd", "--warmup", "10",
            "--args", "decay_ratio=0.2", "decay_type=1-sqrt", "-o", str(png), "--json"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[0])
    lrs = _lrs("wsd", 300, decay_ratio=0.2, decay_type="1-sqrt")
    np.testing.assert_allclose(result["lrs"], lrs)
    assert result["predicted_loss"][-1] == pytest.approx(predict_loss_curve(TRUE, lrs)[-1], rel=5e-3)
    assert result["params"]["C"] == pytest.approx(TRUE.C, rel=0.1)
    assert result["fit_rmse"] < 0.02
    assert png.is_file() and png.stat().st_size > 10_000


def test_predict_loss_text_output_and_longer_run(logs, capsys):
    assert main(["predict-loss", "--log", logs[0], "--log", logs[1], "--schedule", "linear", "--steps", "600"]) == 0
    out = capsys.readouterr().out
    assert "fitted L = " in out and "linear over 600 steps at peak lr 0.001" in out


@pytest.mark.parametrize("extra,match", [
    (["--schedule", "cosinus"], "cosine"),  # unknown names list the close valid ones
    (["--schedule", "wsd", "--args", "decay_ration=0.2"], "decay_ratio"),
    (["--schedule", "wsd", "--args", "oops"], "NAME=VALUE"),
    (["--schedule", "wsd", "--loss-key", "eval_loss"], "eval_loss"),
    (["--schedule", "wsd", "--peak-lr", "0"], "--peak-lr"),
])  # fmt: skip
def test_predict_loss_bad_input(logs, extra, match, capsys):
    assert main(["predict-loss", "--log", logs[0], *extra]) == 1
    assert match in capsys.readouterr().err


def test_predict_loss_missing_log(tmp_path, capsys):
    assert main(["predict-loss", "--log", str(tmp_path / "nope.jsonl"), "--schedule", "wsd"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    assert main(["predict-loss", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--log", "--schedule", "--steps", "--warmup", "--peak-lr", "--args", "--loss-key", "-o"):
        assert option in out
