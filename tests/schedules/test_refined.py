"""refined (Defazio et al., arXiv 2310.07831): the formula on hand-computed cases, linear decay from constant
norms, warmup and a sharp final anneal from a synthetic log, reading logs, resume, and errors."""

import io
import json
import math

import numpy as np
import pytest
import torch

from hf_effi.schedules import make_scheduler, profiles, refine, refined_multipliers
from hf_effi.schedules.refined import median_filter


def adamw():
    return torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=1e-3)


def test_constant_norms_give_exactly_the_linear_profile():
    for norm in ("l1", "l2"):
        m = refined_multipliers([2.5] * 37, 80, norm=norm)
        expected = [profiles.linear(t, num_training_steps=80) for t in range(81)]
        assert m == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "norm, expected",
    [
        # w = 1/g = [1, .5, 1, .5]; eta_t = w_t * sum_{p>t} w_p = [2, .75, .5, 0] / 2
        ("l1", [1.0, 0.375, 0.25, 0.0]),
        # w = 1/g^2 = [1, .25, 1, .25]; eta = [1.5, .3125, .25, 0] / 1.5
        ("l2", [1.0, 0.3125 / 1.5, 0.25 / 1.5, 0.0]),
    ],
)
def test_weights_and_tail_sums_by_hand(norm, expected):
    assert refined_multipliers([1.0, 2.0, 1.0, 2.0], 3, norm=norm, filter_width=0.0) == pytest.approx(expected)


def test_median_filter_removes_a_spike_and_keeps_the_length():
    out = median_filter(np.array([1.0, 1.0, 1.0, 100.0, 1.0, 1.0, 1.0]), 3)
    assert out.tolist() == [1.0] * 7
    with pytest.raises(ValueError, match="positive odd int"):
        median_filter(np.ones(5), 4)


def synthetic_norms(n=400):
    """Like the paper's LLM runs: large early norms that fall fast, a plateau, norms growing towards the end."""
    t = np.arange(n) / n
    return (1.0 + 6.0 * np.exp(-t / 0.04) + t**8).tolist()


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_synthetic_log_gives_warmup_then_sharp_final_anneal(norm):
    T = 200
    m = np.array(refined_multipliers(synthetic_norms(), T, norm=norm))
    peak = int(m.argmax())
    assert m.max() == pytest.approx(1.0) and m[-1] == 0.0
    assert 0 < peak < 0.3 * T and m[0] < 0.5  # an automatic warmup
    # rising to the peak (the reflected median filter leaves dips below 0.1% in the first few steps)
    assert np.all(np.diff(m[: peak + 1]) >= -1e-3) and m[peak // 2] > m[0] + 0.1
    linear = 1.0 - np.arange(T + 1) / T
    tail = slice(int(0.9 * T), T)
    assert np.all(m[tail] < linear[tail])  # below linear decay over the last 10%: a sharper anneal
    assert m[int(0.8 * T)] > 0.3 * linear[int(0.8 * T)]  # ...that comes late, not a uniformly lower curve


def test_refined_schedule_resumes_and_state_is_weights_only():
    kw = refine(synthetic_norms(50))

    def build():
        opt = adamw()
        return opt, make_scheduler("refined", opt, num_training_steps=30, **kw)

    opt, sched = build()
    lrs = []
    for step in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
        if step == 11:
            buf = io.BytesIO()
            torch.save(sched.state_dict(), buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=True)
    opt2, sched2 = build()
    sched2.load_state_dict(saved)
    for g, lr in zip(opt2.param_groups, sched2.get_last_lr()):
        g["lr"] = lr
    resumed = []
    for _ in range(12, 30):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step(), sched2.step()
    assert resumed == lrs[12:]
    assert sched2.values(31) == pytest.approx(refined_multipliers(kw["grad_norms"], 30))


def test_refine_reads_logger_rows_jsonl_and_trainer_state(tmp_path):
    rows = [{"step": i + 1, "lr": 1e-3, "grad_norm_l2": 2.0 + i, "grad_norm_l1": 10.0 + i} for i in range(6)]
    jsonl = tmp_path / "norms.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert refine(jsonl)["grad_norms"] == [10.0 + i for i in range(6)]
    assert refine(rows, norm="l2") == {"grad_norms": [2.0 + i for i in range(6)], "norm": "l2", "filter_width": 0.1}
    state = tmp_path / "trainer_state.json"
    history = [{"step": i + 1, "loss": 3.0, "grad_norm": 1.5 + i} for i in range(4)] + [{"train_runtime": 1.0}]
    state.write_text(json.dumps({"log_history": history}))
    assert refine(state, norm="l2")["grad_norms"] == [1.5, 2.5, 3.5, 4.5]
    with pytest.raises(ValueError, match="only the l2 'grad_norm'; use norm='l2'"):
        refine(state)
    assert refine([3.0, 2.0, 1.0])["grad_norms"] == [3.0, 2.0, 1.0]


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="norm='l3' is not one of l1, l2"):
        refine([1.0, 2.0], norm="l3")
    with pytest.raises(ValueError, match=r"grad_norms\[1\]=0.0 is not a positive finite number"):
        refine([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="is not a file"):
        refine(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="needs grad_norms from a previous run"):
        make_scheduler("refined", adamw(), num_training_steps=10)
    with pytest.raises(ValueError, match="makes its own warmup.*warmup=0"):
        make_scheduler("refined", adamw(), num_training_steps=10, warmup=2, grad_norms=[1.0, 2.0])
    with pytest.raises(ValueError, match="filter_width"):
        refined_multipliers([1.0, 2.0], 5, filter_width=2.0)
    assert math.isclose(refined_multipliers([4.0], 4)[0], 1.0)  # a one-step log still gives linear decay
