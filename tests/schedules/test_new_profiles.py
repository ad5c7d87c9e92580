"""power, one_cycle, infinite and rewarm: formulas at hand-picked steps, shapes, resume, torch parity, errors."""

import io
import math

import pytest
import torch

import hf_effi
from hf_effi.schedules import make_scheduler
from hf_effi.testing import tiny_model


def adamw(lr=1e-3):
    return torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=lr)


def multipliers(name, lr=1e-3, steps=100, warmup=0, **kw):
    return make_scheduler(name, adamw(lr), num_training_steps=steps, warmup=warmup, **kw).values(steps + 1)


# --- power -----------------------------------------------------------------------------------------------------


def power_law(step, batch=1, seq=1000, a=4.0, b=-0.51, peak=0.02):
    return min(1.0, batch * a * (step * batch * seq) ** b / peak)


def test_power_matches_formula_at_picked_steps():
    m = multipliers("power", lr=0.02, warmup=10, batch_size=1, seq_len=1000, decay_ratio=10)
    assert m[5] == pytest.approx(0.5 * power_law(10))  # warmup to the law's value at the end of warmup
    assert m[50] == pytest.approx(power_law(50)) and 0.5 < m[50] < 1.0  # 4 * 50000^-0.51 / 0.02 = 0.80
    assert m[95] == pytest.approx(power_law(90) * 0.5**2.5)  # exponential decay, half-life 2 steps
    assert m[100] == pytest.approx(power_law(90) / 32)


def test_power_is_a_power_law_in_tokens_with_exponent_b():
    m = multipliers("power", lr=0.02, warmup=10, batch_size=1, seq_len=1000, b=-0.51)
    slope = (math.log(m[85]) - math.log(m[45])) / (math.log(85) - math.log(45))  # both below the cap
    assert slope == pytest.approx(-0.51, abs=1e-9)
    after_warmup = m[10:]
    assert all(x >= y for x, y in zip(after_warmup, after_warmup[1:]))


def test_power_is_capped_by_the_optimizer_lr():
    m = multipliers("power", lr=1e-4, batch_size=64, seq_len=2048)  # the law is far above 1e-4 this early
    assert max(m) == 1.0 and m[40] == 1.0


def test_power_without_batch_size_says_what_to_pass():
    with pytest.raises(ValueError, match="needs batch_size.*seq_len"):
        multipliers("power")
    with pytest.raises(ValueError, match="needs seq_len"):
        multipliers("power", batch_size=8)


def test_power_warmup_plus_decay_longer_than_run():
    with pytest.raises(ValueError, match=r"warmup \(60 steps\) \+ decay \(50 steps\) is longer"):
        multipliers("power", warmup=60, batch_size=8, seq_len=16, decay_ratio=0.5)


def test_peak_lr_is_injected_not_a_user_argument():
    with pytest.raises(ValueError, match="unknown argument.*'peak_lr'"):
        multipliers("power", batch_size=8, seq_len=16, peak_lr=0.1)


# --- one_cycle -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt_cls, kw",
    [
        pytest.param(torch.optim.SGD, dict(momentum=0.9), id="sgd-two-phase-cos"),
        pytest.param(torch.optim.AdamW, dict(), id="adamw-two-phase-cos"),
        pytest.param(torch.optim.AdamW, dict(three_phase=True), id="adamw-three-phase"),
        pytest.param(torch.optim.SGD, dict(momentum=0.9, anneal_strategy="linear", pct_start=0.25), id="sgd-linear"),
    ],
)
def test_one_cycle_matches_torch_onecycle_lr_and_momentum(opt_cls, kw):
    opt_kw = {k: kw.pop(k) for k in ("momentum",) if k in kw}
    ours_opt = opt_cls([torch.zeros(1, requires_grad=True)], lr=0.1, **opt_kw)
    ref_opt = opt_cls([torch.zeros(1, requires_grad=True)], lr=0.1, **opt_kw)
    ours = make_scheduler("one_cycle", ours_opt, num_training_steps=50, **kw)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.1, total_steps=50, **kw)
    key = "betas" if "betas" in ref_opt.param_groups[0] else "momentum"
    for _ in range(50):
        a, b = ours_opt.param_groups[0], ref_opt.param_groups[0]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12, abs=1e-15)
        mom_a = a[key][0] if key == "betas" else a[key]
        mom_b = b[key][0] if key == "betas" else b[key]
        assert mom_a == pytest.approx(mom_b, rel=1e-12)
        ours_opt.step(), ref_opt.step()
        ours.step(), ref.step()


def test_one_cycle_warmup_sets_the_rising_phase_and_refuses_pct_start_too():
    m = multipliers("one_cycle", steps=100, warmup=20)
    assert m.index(max(m)) == 19 and m[0] == pytest.approx(1 / 25)  # torch's end of phase 1: pct * T - 1
    with pytest.raises(ValueError, match="both warmup .* and pct_start"):
        multipliers("one_cycle", warmup=20, pct_start=0.3)


def test_one_cycle_needs_a_momentum_to_cycle():
    opt = torch.optim.Adagrad([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="neither 'betas' nor 'momentum'.*cycle_momentum=False"):
        make_scheduler("one_cycle", opt, num_training_steps=10)
    make_scheduler("one_cycle", opt, num_training_steps=10, cycle_momentum=False)


def test_one_cycle_through_make_cycles_adamw_beta1():
    model = tiny_model("llama")
    opt, sched = hf_effi.make("adamw", model, lr=1e-3, num_training_steps=20, schedule="one_cycle")
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)
    for _ in range(6):
        opt.step(), sched.step()
    assert all(g["betas"][0] == pytest.approx(sched.momentum(6)) for g in opt.param_groups)
    assert 0.85 < opt.param_groups[0]["betas"][0] < 0.95


# --- infinite --------------------------------------------------------------------------------------------------


def test_infinite_phases_at_picked_steps():
    m = multipliers("infinite", steps=100, warmup=10, cooldown_steps=10, constant_lr=0.5, anneal_steps=20, floor=0.1)
    assert m[5] == pytest.approx(0.5)  # warmup
    assert m[15] == pytest.approx(0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # cosine cooldown, halfway
    assert m[20] == m[50] == m[80] == pytest.approx(0.5)  # constant until the anneal (last 20 steps)
    assert m[90] == pytest.approx(0.5 * (0.1 / 0.5) ** 0.5)  # geometric anneal, halfway
    assert m[100] == pytest.approx(0.1)
    assert all(x >= y for x, y in zip(m[10:], m[11:]))


def test_infinite_without_anneal_stays_constant():
    m = multipliers("infinite", steps=100, warmup=0, cooldown_steps=10, anneal_steps=0, constant_lr=0.3)
    assert m[10:] == [pytest.approx(0.3)] * 91


def test_infinite_anneals_on_demand_from_a_constant_phase_checkpoint():
    opt = adamw()
    sched = make_scheduler("infinite", opt, num_training_steps=100, cooldown_steps=10, anneal_steps=0)
    for _ in range(40):
        opt.step(), sched.step()
    saved = roundtrip(sched.state_dict())
    # Later: continue that checkpoint for longer and anneal from step 150 over 50 steps.
    opt2 = adamw()
    sched2 = make_scheduler(
        "infinite", opt2, num_training_steps=200, cooldown_steps=10, anneal_steps=50, anneal_from_step=150
    )
    sched2.load_state_dict(saved)
    assert sched2.last_epoch == 40 and sched2.settings["anneal_from_step"] == 150
    assert sched2.multiplier(149) == pytest.approx(0.5) and sched2.multiplier(200) == pytest.approx(0.1)
    # A setting that shapes the past (cooldown) may not change.
    opt3 = adamw()
    sched3 = make_scheduler("infinite", opt3, num_training_steps=200, cooldown_steps=20, anneal_steps=0)
    with pytest.raises(ValueError, match="cooldown_steps"):
        sched3.load_state_dict(saved)


def test_infinite_too_long_for_the_run():
    with pytest.raises(ValueError, match="does not fit in num_training_steps=50"):
        multipliers("infinite", steps=50, warmup=20, cooldown_steps=20, anneal_steps=20)
    with pytest.raises(ValueError, match="anneal must start at or after step 20"):
        multipliers("infinite", steps=100, warmup=10, cooldown_steps=10, anneal_steps=10, anneal_from_step=15)


# --- rewarm ----------------------------------------------------------------------------------------------------


def test_rewarm_from_checkpoint_lr_at_picked_steps():
    m = multipliers("rewarm", lr=3e-4, steps=110, warmup=10, checkpoint_lr=3e-5)
    assert m[0] == pytest.approx(0.1) and m[5] == pytest.approx(0.55) and m[10] == pytest.approx(1.0)
    assert m[60] == pytest.approx(0.1 + 0.9 * 0.5)  # cosine re-decay to 0.1, halfway
    assert m[110] == pytest.approx(0.1)
    assert all(x <= y for x, y in zip(m[:10], m[1:11])) and all(x >= y for x, y in zip(m[10:], m[11:]))


def test_rewarm_errors():
    with pytest.raises(ValueError, match="needs checkpoint_lr"):
        multipliers("rewarm")
    with pytest.raises(ValueError, match="above the new peak"):
        multipliers("rewarm", lr=1e-4, checkpoint_lr=1e-3)


# --- shared ----------------------------------------------------------------------------------------------------


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


CASES = [
    ("power", dict(batch_size=1, seq_len=1000)),
    ("one_cycle", {}),
    ("infinite", {}),
    ("rewarm", dict(checkpoint_lr=1e-4)),
]


@pytest.mark.parametrize("name, kw", CASES, ids=[c[0] for c in CASES])
def test_resume_is_exact_and_state_is_weights_only(name, kw):
    def build():
        opt = torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=0.02)
        return opt, make_scheduler(name, opt, num_training_steps=60, warmup=0 if name == "one_cycle" else 5, **kw)

    opt, sched = build()
    history = []
    for step in range(60):
        history.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
        opt.step(), sched.step()
        if step == 23:
            saved_sched, saved_opt = roundtrip(sched.state_dict()), roundtrip(opt.state_dict())
    opt2, sched2 = build()
    opt2.load_state_dict(saved_opt)  # Trainer restores the optimizer (lr, betas) and then the scheduler
    sched2.load_state_dict(saved_sched)
    resumed = []
    for _ in range(24, 60):
        resumed.append((opt2.param_groups[0]["lr"], opt2.param_groups[0]["betas"][0]))
        opt2.step(), sched2.step()
    assert resumed == history[24:]


def test_unknown_argument_names_the_valid_ones():
    with pytest.raises(
        ValueError, match="'constant'.*did you mean 'constant_lr'.*accepts: constant_lr, cooldown_steps"
    ):
        multipliers("infinite", constant=0.5)


def test_one_cycle_by_name_inside_effi_trainer_cycles_beta1(tmp_path):
    from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

    ids = list(range(1, 17))
    args = EffiTrainingArguments(
        str(tmp_path),
        effi_optim="adamw",
        effi_schedule="one_cycle",
        learning_rate=1e-3,
        max_steps=6,
        per_device_train_batch_size=2,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=1,
    )
    trainer = EffiTrainer(model=tiny_model("llama"), args=args, train_dataset=[{"input_ids": ids, "labels": ids}] * 12)
    trainer.train()
    expected = [trainer.lr_scheduler.momentum(s) for s in range(7)]
    assert trainer.optimizer.param_groups[0]["betas"][0] == pytest.approx(expected[6])
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs == pytest.approx([1e-3 * trainer.lr_scheduler.multiplier(s) for s in range(6)])
