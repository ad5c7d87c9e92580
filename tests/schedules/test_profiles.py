"""Schedule values at hand-picked steps, from the formulas in each profile's docstring."""

import math

import pytest
import torch
from transformers import optimization as hf_opt

from hf_effi.schedules import make_scheduler, profiles


def values(name, steps, **kw):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return make_scheduler(name, opt, num_training_steps=steps, **kw).values(steps + 1)


# (schedule, kwargs, step, expected multiplier); T = 100 throughout.
HAND_PICKED = [
    ("constant", {"warmup": 10}, 0, 0.0),
    ("constant", {"warmup": 10}, 5, 0.5),
    ("constant", {"warmup": 10}, 10, 1.0),
    ("constant", {"warmup": 10}, 99, 1.0),
    ("linear", {}, 0, 1.0),
    ("linear", {}, 50, 0.5),
    ("linear", {}, 100, 0.0),
    ("linear", {"floor": 0.1}, 50, 0.1 + 0.9 * 0.5),
    ("linear", {"warmup": 20}, 60, 0.5),
    ("cosine", {}, 50, 0.5),
    ("cosine", {}, 25, 0.5 * (1 + math.cos(math.pi / 4))),
    ("cosine", {"floor": 0.2}, 100, 0.2),
    ("rex", {}, 50, 0.5 / 0.75),
    ("rex", {}, 100, 0.0),
    ("rex", {"alpha": 0.9}, 50, 0.5 / 0.55),
    ("rex", {"alpha": 0.0}, 30, 0.7),
    ("wsd", {"warmup": 10}, 5, 0.5),
    ("wsd", {}, 89, 1.0),
    ("wsd", {}, 90, 1.0),  # default decay: last 10% of 100 steps -> starts at step 90
    ("wsd", {}, 95, 1 - math.sqrt(0.5)),
    ("wsd", {}, 100, 0.0),
    ("wsd", {"schedule_kwargs": {"decay_type": "linear"}}, 95, 0.5),
    ("wsd", {"schedule_kwargs": {"decay_type": "cosine"}}, 95, 0.5),
    ("wsd", {"schedule_kwargs": {"decay_type": "exponential"}}, 95, 0.5**2.5),  # half-life 10/5 = 2 steps
    ("wsd", {"schedule_kwargs": {"decay_type": "exponential", "half_life": 5}}, 100, 0.25),
    ("wsd", {"schedule_kwargs": {"num_decay_steps": 20, "decay_type": "linear"}}, 90, 0.5),
    ("wsd", {"schedule_kwargs": {"decay_ratio": 0.2, "decay_type": "linear", "floor": 0.1}}, 90, 0.1 + 0.9 * 0.5),
]


@pytest.mark.parametrize(
    "name,kw,step,expected", HAND_PICKED, ids=[f"{n}-{i}" for i, (n, *_rest) in enumerate(HAND_PICKED)]
)
def test_hand_picked_values(name, kw, step, expected):
    kw = dict(kw)
    sched_kwargs = kw.pop("schedule_kwargs", {})
    assert values(name, 100, **kw, **sched_kwargs)[step] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (("constant", {}), lambda o: hf_opt.get_constant_schedule_with_warmup(o, 7)),
        (("linear", {}), lambda o: hf_opt.get_linear_schedule_with_warmup(o, 7, 50)),
        (("cosine", {}), lambda o: hf_opt.get_cosine_schedule_with_warmup(o, 7, 50)),
        (
            ("wsd", {"num_decay_steps": 10, "decay_type": "1-sqrt"}),
            lambda o: hf_opt.get_wsd_schedule(o, 7, 10, num_training_steps=50, decay_type="1-sqrt"),
        ),
        (
            ("wsd", {"num_decay_steps": 10, "decay_type": "cosine"}),
            lambda o: hf_opt.get_wsd_schedule(o, 7, 10, num_training_steps=50),
        ),
    ],
    ids=["constant", "linear", "cosine", "wsd-1-sqrt", "wsd-cosine"],
)
def test_same_values_as_transformers(ours, theirs):
    """A user switching from transformers' schedule of the same name sees the same learning rates."""
    name, kw = ours
    mine = values(name, 50, warmup=7, **kw)[:50]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = theirs(opt)
    ref = [sched.lr_lambdas[0](s) for s in range(50)]
    assert mine == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine", "rex", "wsd"])
def test_decaying_profiles_are_monotone_after_warmup(name):
    v = values(name, 200, warmup=20)
    assert all(a <= b for a, b in zip(v[:20], v[1:21]))
    assert all(a >= b - 1e-15 for a, b in zip(v[20:], v[21:]))
    assert v[20] == 1.0 and v[200] == pytest.approx(0.0, abs=1e-12)


def test_rex_lies_between_linear_and_constant():
    lin, rex = values("linear", 100), values("rex", 100)
    assert all(l_ <= r <= 1.0 for l_, r in zip(lin[1:-1], rex[1:-1]))


def test_unknown_decay_type_in_pure_function():
    with pytest.raises(ValueError, match="decay_type='step'"):
        profiles.wsd(95, num_training_steps=100, num_decay_steps=10, decay_type="step")
