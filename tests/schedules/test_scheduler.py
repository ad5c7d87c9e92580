"""The scheduler base: state is numbers only, resumes exactly, per-group peaks, plots, clear errors."""

import io

import pytest
import torch

from hf_effi.schedules import ProfileScheduler, make_scheduler, resolve_warmup


def two_group_optimizer():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    return torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}], lr=1.0)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "rex", "wsd"])
def test_state_dict_is_weights_only_and_resume_is_exact(name):
    opt = two_group_optimizer()
    sched = make_scheduler(name, opt, num_training_steps=40, warmup=5)
    lrs = []
    for step in range(40):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
        if step == 16:
            saved = roundtrip(sched.state_dict())
    assert all(isinstance(v, (int, float, str, bool, list, dict, type(None))) for v in saved.values())

    opt2 = two_group_optimizer()
    sched2 = make_scheduler(name, opt2, num_training_steps=40, warmup=5)
    sched2.load_state_dict(saved)
    for g, lr in zip(opt2.param_groups, sched2.get_last_lr()):
        g["lr"] = lr  # what Trainer's resume does through the optimizer's own state
    resumed = []
    for _ in range(17, 40):
        resumed.append([g["lr"] for g in opt2.param_groups])
        opt2.step()
        sched2.step()
    assert resumed == lrs[17:]


def test_each_group_keeps_its_own_peak():
    opt = two_group_optimizer()
    sched = make_scheduler("linear", opt, num_training_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert sched.get_last_lr() == pytest.approx([0.5, 0.05])


def test_resume_with_other_settings_is_refused():
    opt = two_group_optimizer()
    state = make_scheduler("wsd", opt, num_training_steps=100).state_dict()
    other = make_scheduler("wsd", two_group_optimizer(), num_training_steps=200)
    with pytest.raises(ValueError, match="num_training_steps"):
        other.load_state_dict(state)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    sched = make_scheduler("wsd", two_group_optimizer(), num_training_steps=50, warmup=5)
    path = sched.plot(tmp_path / "wsd.png", 50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_custom_profile():
    sched = ProfileScheduler(two_group_optimizer(), lambda step: 0.5**step, name="halving")
    assert sched.values(3) == [1.0, 0.5, 0.25]


@pytest.mark.parametrize(
    "warmup,steps,expected", [(0, 10, 0), (3, 10, 3), (0.1, 100, 10), (0.25, 10, 2)], ids=["0", "int", "frac", "round"]
)
def test_resolve_warmup(warmup, steps, expected):
    assert resolve_warmup(warmup, steps) == expected


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"warmup": 10}, "not shorter than training"),
        ({"warmup": 0.9999}, "not shorter than training"),
        ({"warmup": -1}, ">= 0"),
        ({"warmup": 1.5}, "fraction"),
        ({"warmup": "5"}, "int"),
        ({"floor": 2.0}, "floor"),
        ({"flor": 0.1}, "did you mean 'floor'"),
        ({"num_training_steps": 0}, "positive int"),
        ({"num_training_steps": 10.0}, "positive int"),
    ],
)
def test_bad_input_is_refused(kwargs, match):
    kwargs = {"num_training_steps": 10, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        make_scheduler("linear", two_group_optimizer(), **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"decay_type": "step"}, "decay_type"),
        ({"num_decay_steps": 10, "warmup": 5}, "fit after warmup"),
        ({"decay_ratio": 0.0}, "decay_ratio"),
        ({"half_life": 3.0}, "exponential"),
    ],
)
def test_bad_wsd_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scheduler("wsd", two_group_optimizer(), num_training_steps=10, **kwargs)


def test_unknown_schedule_names_closest():
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        make_scheduler("cosin", two_group_optimizer(), num_training_steps=10)
