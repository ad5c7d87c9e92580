"""``hf-effi schedule plot``: one or several schedules to a PNG, per-schedule arguments, refined from a log, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_effi.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_several_schedules_on_one_plot(tmp_path, capsys):
    out_png = tmp_path / "s.png"
    code, out, _ = run(
        ["schedule", "plot", "cosine", "wsd", "rex", "--steps", "50", "--warmup", "5", "-o", str(out_png)], capsys
    )
    assert code == 0 and out.strip() == str(out_png)
    assert out_png.read_bytes()[:8] == PNG_MAGIC


def test_one_cycle_adds_a_momentum_panel(tmp_path, capsys):
    from PIL import Image

    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert run(["schedule", "plot", "cosine", "--steps", "40", "-o", str(one)], capsys)[0] == 0
    assert run(["schedule", "plot", "cosine", "one_cycle", "--steps", "40", "-o", str(two)], capsys)[0] == 0
    assert Image.open(two).size[1] == 2 * Image.open(one).size[1]  # a second panel below


def test_args_for_all_and_for_one_schedule(tmp_path, capsys):
    code, _, err = run(
        [
            "schedule",
            "plot",
            "wsd",
            "cosine",
            "--steps",
            "50",
            "--args",
            "floor=0.1",
            "wsd.decay_type=exponential",
            "-o",
            str(tmp_path / "a.png"),
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(
        [
            "schedule",
            "plot",
            "wsd",
            "cosine",
            "--steps",
            "50",
            "--args",
            "decay_type=linear",
            "-o",
            str(tmp_path / "b.png"),
        ],
        capsys,
    )
    assert code == 1 and "schedule 'cosine' got unknown argument(s) 'decay_type'" in err and "accepts: floor" in err


def test_refined_from_a_grad_norm_log(tmp_path, capsys):
    log = tmp_path / "norms.jsonl"
    log.write_text("".join(json.dumps({"step": i + 1, "grad_norm_l1": 5.0 / (i + 1) + 1.0}) + "\n" for i in range(20)))
    code, _, err = run(
        ["schedule", "plot", "linear", "refined", "--steps", "30", "--log", str(log), "-o", str(tmp_path / "r.png")],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(["schedule", "plot", "refined", "--steps", "30", "-o", str(tmp_path / "r2.png")], capsys)
    assert code == 1 and "pass --log" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cosin", "--steps", "10"], "Unknown schedule 'cosin'. Did you mean 'cosine'"),
        (["power", "--steps", "10"], "needs batch_size"),
        (["cosine", "--steps", "0"], "--steps=0 must be a positive"),
        (["cosine", "--steps", "10", "--warmup", "10"], "warmup (10 steps) is not shorter than training"),
        (["cosine", "--steps", "10", "--args", "floor"], "must look like KEY=VALUE"),
        (["cosine", "--steps", "10", "--args", "wsd.floor=0.1"], "is for schedule 'wsd', which is not plotted"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, argv, message):
    code, _, err = run(["schedule", "plot", *argv, "-o", str(tmp_path / "x.png")], capsys)
    assert code == 1 and message in err and err.startswith("hf-effi schedule: error:")
    assert not (tmp_path / "x.png").exists()


def test_help_is_complete(capsys):
    code, out, _ = run(["schedule", "plot", "--help"], capsys)
    assert code == 0
    for flag in ("--steps", "--warmup", "--lr", "--args", "--log", "--norm", "--output", "NAME", "one_cycle"):
        assert flag in out


@pytest.mark.slow
def test_installed_console_script_registers_the_command(tmp_path):
    script = Path(sys.executable).parent / "hf-effi"
    if not script.exists():
        pytest.skip("the hf-effi console script is not installed next to this Python")
    result = subprocess.run([str(script), "schedule", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "plot" in result.stdout
