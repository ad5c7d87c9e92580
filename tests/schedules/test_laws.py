"""Step Law, the two-batch noise-scale estimator and the annealing loss-curve law (hf_effi.schedules.laws)."""

import json
import math

import numpy as np
import pytest

from hf_effi.schedules.laws import (
    LossCurveParams,
    LossCurveRun,
    annealing_areas,
    fit_loss_curve,
    noise_scale_from_norms,
    predict_loss_curve,
    read_loss_log,
    step_law,
    step_law_batch_size,
    step_law_lr,
)

# --- Step Law (Li et al., arXiv 2503.04715) ------------------------------------------------------------------------

# (N non-embedding params, D tokens, lr, batch tokens) rounded as in the survey notes' worked examples.
STEP_LAW_EXAMPLES = [
    pytest.param(1e8, 2e9, 2.5e-3, 1.2e5, id="N1e8-D2e9"),
    pytest.param(1e9, 1e11, 1.6e-3, 1.1e6, id="N1e9-D1e11"),
    pytest.param(7e9, 2e12, 1.0e-3, 6.1e6, id="N7e9-D2e12"),
]


@pytest.mark.parametrize("n,d,lr,batch", STEP_LAW_EXAMPLES)
def test_step_law_matches_worked_examples(n, d, lr, batch):
    # The examples are rounded to two significant digits.
    assert step_law_lr(n, d) == pytest.approx(lr, rel=0.03)
    assert step_law_batch_size(d) == pytest.approx(batch, rel=0.03)


def test_step_law_by_hand():
    # eta = 1.79 * 1e8^-0.713 * 2e9^0.307, in logs: log10(1.79) - 0.713*8 + 0.307*log10(2e9)
    log_lr = math.log10(1.79) - 0.713 * 8 + 0.307 * (9 + math.log10(2))
    assert step_law_lr(1e8, 2e9) == pytest.approx(10**log_lr, rel=1e-12)
    assert step_law_lr(1e8, 2e9) == pytest.approx(2.537e-3, rel=1e-3)
    assert step_law_batch_size(2e9) == pytest.approx(0.58 * 2e9**0.571, rel=1e-12)
    # more parameters -> lower lr; more tokens -> higher lr and bigger batch
    assert step_law_lr(1e9, 2e9) < step_law_lr(1e8, 2e9) < step_law_lr(1e8, 2e10)


def test_step_law_in_sequences():
    s = step_law(1e8, 2e9, seq_len=2048)
    assert s.batch_sequences == round(s.batch_tokens / 2048) == 58
    assert s.steps == math.ceil(2e9 / (58 * 2048))
    assert s.lr == step_law_lr(1e8, 2e9)
    assert step_law(1e8, 2e9).batch_sequences is None


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1e8", None])
def test_step_law_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="n_params"):
        step_law_lr(bad, 1e9)
    with pytest.raises(ValueError, match="tokens"):
        step_law_batch_size(bad)


def test_step_law_rejects_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len"):
        step_law(1e8, 1e9, seq_len=0)


# --- noise scale from two batch sizes (McCandlish et al., arXiv 1812.06162, App. A) ----------------------------


def test_noise_scale_from_expected_norms_is_exact():
    # E|G_B|^2 = |G|^2 + tr(Sigma)/B; with |G|^2 = 4 and tr(Sigma) = 8: B=2 -> 8, B=8 -> 5.
    g2, trace = noise_scale_from_norms(8.0, 5.0, 2, 8)
    assert g2 == pytest.approx(4.0) and trace == pytest.approx(8.0)


def test_noise_scale_recovers_b_simple_from_sampled_gradients():
    # Per-example gradients g ~ N(G, diag(s^2)): tr(Sigma) = sum s^2, so B_simple = sum s^2 / |G|^2 = 40 / 1.
    rng = np.random.default_rng(0)
    d, b_small, k = 10, 4, 8
    mean = np.zeros(d)
    mean[0] = 1.0
    scale = np.full(d, 2.0)
    small, big = [], []
    for _ in range(3000):
        per_example = mean + scale * rng.standard_normal((b_small * k, d))
        micro = per_example.reshape(k, b_small, d).mean(axis=1)
        small.append(np.mean(np.sum(micro**2, axis=1)))
        big.append(np.sum(micro.mean(axis=0) ** 2))
    g2, trace = noise_scale_from_norms(np.mean(small), np.mean(big), b_small, b_small * k)
    assert trace / g2 == pytest.approx(40.0, rel=0.1)


def test_noise_scale_rejects_bad_batches():
    with pytest.raises(ValueError, match="batch_big"):
        noise_scale_from_norms(1.0, 1.0, 8, 8)
    with pytest.raises(ValueError, match="batch_small"):
        noise_scale_from_norms(1.0, 1.0, 0, 8)


# --- annealing loss-curve law (Tissue et al., arXiv 2408.11029) ---------------------------------------------------


def test_annealing_areas_by_hand():
    # lam = 0.5: drops [0, 0, 0.5, 0] -> m = [0, 0, 0.5, 0.25] -> S2 = [0, 0, 0.5, 0.75]
    s1, s2 = annealing_areas([1.0, 1.0, 0.5, 0.5], lam=0.5)
    np.testing.assert_allclose(s1, [1, 2, 2.5, 3])
    np.testing.assert_allclose(s2, [0, 0, 0.5, 0.75])


def test_leading_warmup_adds_no_annealing_area_but_rewarming_does():
    _, s2 = annealing_areas([0.5, 1.0, 1.0, 0.5], lam=0.5)
    np.testing.assert_allclose(s2, [0, 0, 0, 0.5])  # the warmup rise 0.5 -> 1 is not counted
    _, s2 = annealing_areas([1.0, 0.5, 1.0], lam=0.5)
    np.testing.assert_allclose(s2, [0, 0.5, 0.25])  # m = [0, 0.5, 0.25 - 0.5 = -0.25]: S2 shrinks


def test_predict_is_the_formula_and_nan_before_any_lr():
    p = LossCurveParams(L0=2.0, A=1.5, alpha=0.5, C=0.1, lam=0.5, lr_scale=0.01)
    pred = predict_loss_curve(p, [0.0, 0.01, 0.01, 0.005])
    assert math.isnan(pred[0])
    # step 4: S1 = (0 + 1 + 1 + 0.5) = 2.5, S2 = 0.5 (in units of lr_scale)
    assert pred[3] == pytest.approx(2.0 + 1.5 * 2.5**-0.5 - 0.1 * 0.5)


def _schedules(n):
    warm = 10
    const = np.ones(n)
    const[:warm] = np.arange(1, warm + 1) / warm
    cos = np.where(np.arange(n) < warm, const, 0.5 * (1 + np.cos(np.pi * (np.arange(n) - warm) / (n - warm))))
    wsd = const.copy()
    wsd[-n // 5 :] = 1 - np.sqrt(np.linspace(0, 1, n // 5 + 1)[1:])
    return 3e-4 * const, 3e-4 * cos, 3e-4 * wsd


def _noisy_run(params, lrs, rng, sd=0.01, outliers=0):
    y = predict_loss_curve(params, lrs) + rng.normal(0, sd, lrs.size)
    y[rng.choice(lrs.size, outliers, replace=False)] += 1.0  # a few bad batches
    return LossCurveRun(np.arange(1, lrs.size + 1), lrs, y)


def test_fit_recovers_known_constants_from_noisy_curves():
    true = LossCurveParams(L0=3.0, A=2.0, alpha=0.45, C=0.004, lam=0.999, lr_scale=3e-4)
    const, cos, wsd = _schedules(600)
    rng = np.random.default_rng(0)
    fit = fit_loss_curve([_noisy_run(true, const, rng, outliers=6), _noisy_run(true, cos, rng, outliers=6)])
    assert fit.L0 == pytest.approx(true.L0, abs=0.1)
    assert fit.A == pytest.approx(true.A, rel=0.1)
    assert fit.alpha == pytest.approx(true.alpha, rel=0.1)
    assert fit.C == pytest.approx(true.C, rel=0.05)
    assert fit.lr_scale == 3e-4
    # A schedule it never saw: the final loss within 0.5%.
    assert predict_loss_curve(fit, wsd)[-1] == pytest.approx(predict_loss_curve(true, wsd)[-1], rel=5e-3)


def test_huber_resists_outliers_better_than_least_squares():
    true = LossCurveParams(L0=3.0, A=2.0, alpha=0.45, C=0.004, lam=0.999, lr_scale=3e-4)
    const, cos, _ = _schedules(400)
    rng = np.random.default_rng(1)
    runs = [_noisy_run(true, const, rng, outliers=20), _noisy_run(true, cos, rng, outliers=20)]
    robust = fit_loss_curve(runs, huber_delta=0.01)
    squared = fit_loss_curve(runs, huber_delta=100.0)  # Huber with a huge delta is least squares
    assert abs(robust.L0 - true.L0) < abs(squared.L0 - true.L0)
    assert robust.C == pytest.approx(true.C, rel=0.1)


def test_fit_is_unit_free_in_the_learning_rate():
    true = LossCurveParams(L0=3.0, A=2.0, alpha=0.45, C=0.004, lam=0.999, lr_scale=3e-4)
    const, cos, wsd = _schedules(300)
    rng = np.random.default_rng(2)
    runs = [_noisy_run(true, const, rng), _noisy_run(true, cos, rng)]
    scaled = [LossCurveRun(r.steps, r.lrs * 10, r.losses) for r in runs]
    a, b = fit_loss_curve(runs), fit_loss_curve(scaled)
    np.testing.assert_allclose(predict_loss_curve(a, wsd), predict_loss_curve(b, wsd * 10), rtol=1e-6)


def test_records_with_sparse_steps_interpolate_the_lr():
    recs = [{"step": 1, "lr": 1.0, "loss": 5.0}, {"step": 3, "learning_rate": 0.5, "loss": 4.0}, {"eval_loss": 1}]
    run = LossCurveRun.from_records(recs)
    np.testing.assert_allclose(run.lrs, [1.0, 0.75, 0.5])
    np.testing.assert_array_equal(run.steps, [1, 3])


def test_read_loss_log_jsonl_and_trainer_state(tmp_path):
    recs = [{"step": s, "lr": 1e-3, "loss": 4.0 - 0.1 * s} for s in range(1, 6)]
    (tmp_path / "run.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    history = [{"step": r["step"], "learning_rate": r["lr"], "loss": r["loss"]} for r in recs]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [*history, {"train_runtime": 1.0}]}))
    a, b = read_loss_log(tmp_path / "run.jsonl"), read_loss_log(tmp_path / "trainer_state.json")
    np.testing.assert_allclose(a.losses, b.losses)
    with pytest.raises(ValueError, match="does not exist"):
        read_loss_log(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_loss_log(tmp_path / "bad.jsonl")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: annealing_areas([1.0, 0.5], lam=1.0), "lam"),
        (lambda: annealing_areas([1.0, -0.5]), "lrs"),
        (lambda: annealing_areas([]), "lrs"),
        (lambda: fit_loss_curve([]), "runs"),
        (lambda: LossCurveRun.from_records([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 1.0}]), "lr"),
        (lambda: LossCurveRun.from_records([{"step": 1, "lr": 1.0, "loss": 1.0}]), "at least 2"),
        (
            lambda: LossCurveRun.from_records([{"step": 0, "lr": 1, "loss": 1}, {"step": 1, "lr": 1, "loss": 1}]),
            "steps",
        ),
        (lambda: fit_loss_curve(LossCurveRun(np.arange(1, 4), np.ones(3), np.ones(3)), min_step=0), "min_step"),
        (lambda: fit_loss_curve(LossCurveRun(np.arange(1, 4), np.ones(3), np.ones(3)), huber_delta=0), "huber_delta"),
        (lambda: fit_loss_curve(LossCurveRun(np.arange(1, 4), np.ones(3), np.ones(3))), "4 constants"),
        (lambda: fit_loss_curve(LossCurveRun(np.arange(1, 9), np.ones(8), np.linspace(1, 2, 8))), "do not fall"),
        (lambda: predict_loss_curve({"L0": 1.0}, [1.0]), "LossCurveParams"),
    ],
)
def test_bad_input_gets_a_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
