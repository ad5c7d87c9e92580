"""NoiseScaleCallback: exact norms from the hooks, a known B_simple on linear regression inside Trainer, errors."""

import math
import types

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_effi.schedules.laws import noise_scale_from_norms
from hf_effi.trainers.noise_scale import NoiseScaleCallback


class LinearRegression(nn.Module):
    """``loss = 0.5 * mean((x . w - y)^2)``; Trainer calls it with the batch's ``x`` and ``y``."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x, y):
        return {"loss": 0.5 * ((x @ self.w - y) ** 2).mean()}


def _regression_data(n, dim, w_true, noise_sd, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = x @ w_true + noise_sd * torch.randn(n, generator=g)
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def test_hooks_give_exact_micro_and_accumulated_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    cb = NoiseScaleCallback(ema=0.0)
    k, micro = 3, 4
    args = types.SimpleNamespace(gradient_accumulation_steps=k, per_device_train_batch_size=micro)
    state = types.SimpleNamespace(global_step=0, log_history=[])
    cb.on_train_begin(args, state, None, model=model)
    batches = [(torch.randn(micro, 5), torch.randn(micro, 3)) for _ in range(k)]
    grads = []
    for x, t in batches:  # as Trainer does: each micro-batch loss scaled by 1/k, gradients accumulate in .grad
        before = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        (nn.functional.mse_loss(model(x), t) / k).backward()
        grads.append([p.grad - b for p, b in zip(model.parameters(), before)])
    cb.on_pre_optimizer_step(args, state, None)
    sq = [sum(float((k * g).pow(2).sum()) for g in micro_grads) for micro_grads in grads]
    acc = sum(float(p.grad.pow(2).sum()) for p in model.parameters())
    g2, trace = noise_scale_from_norms(sum(sq) / k, acc, micro, k * micro)
    entry = cb.history[-1]
    assert entry["step"] == 1
    assert entry["noise_scale/grad_sq"] == pytest.approx(g2, rel=1e-5)
    assert entry["noise_scale/trace_cov"] == pytest.approx(trace, rel=1e-5)
    assert entry["noise_scale/b_simple"] == pytest.approx(trace / g2, rel=1e-5)
    cb.on_train_end(args, state, None)
    assert not cb._handles


def test_recovers_known_b_simple_inside_trainer(tmp_path):
    # At w = 0 with x ~ N(0, I_d), y = x . w* + eps: G = -w*, tr(Sigma) = d (|w*|^2 + s^2) + |w*|^2,
    # so B_simple = d (1 + s^2 / |w*|^2) + 1 = 8 * 2 + 1 = 17 for d = 8, |w*| = 1, s = 1. lr = 0 keeps w = 0.
    dim, micro, k, steps = 8, 4, 8, 120
    w_true = torch.zeros(dim)
    w_true[0] = 1.0
    data = _regression_data(micro * k * steps, dim, w_true, 1.0, seed=0)
    cb = NoiseScaleCallback(ema=0.995, tokens_per_row=16)
    args = TrainingArguments(
        str(tmp_path), per_device_train_batch_size=micro, gradient_accumulation_steps=k, learning_rate=0.0,
        max_steps=steps, logging_steps=40, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
        max_grad_norm=0.0, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=LinearRegression(dim), args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    assert len(cb.history) == steps
    assert cb.b_simple == pytest.approx(17.0, rel=0.2)
    logged = [h for h in trainer.state.log_history if "noise_scale/b_simple" in h]
    assert [h["step"] for h in logged] == [40, 80, 120]
    assert logged[-1]["noise_scale/b_simple_tokens"] == pytest.approx(16 * logged[-1]["noise_scale/b_simple"])
    assert not cb._handles  # hooks removed at the end of training


def test_needs_gradient_accumulation(tmp_path):
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to="none",
                             use_cpu=True, disable_tqdm=True, save_strategy="no")  # fmt: skip
    trainer = Trainer(model=LinearRegression(3), args=args, train_dataset=_regression_data(16, 3, torch.ones(3), 0.1, 0),
                      callbacks=[NoiseScaleCallback()])  # fmt: skip
    with pytest.raises(ValueError, match="gradient_accumulation_steps >= 2"):
        trainer.train()


@pytest.mark.parametrize(
    "kwargs,match", [({"ema": 1.0}, "ema"), ({"ema": -0.1}, "ema"), ({"tokens_per_row": 0}, "tokens_per_row")]
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseScaleCallback(**kwargs)


def test_runs_on_a_causal_lm_with_effi_trainer(tmp_path):
    from hf_effi.testing import tiny_model
    from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

    # a predictable pattern: the mean gradient is strong against the per-row noise, so |G|^2 > 0 at every step
    rows = [{"input_ids": ids, "labels": ids} for ids in (torch.arange(16) * 7 + torch.arange(24)[:, None]) % 256]
    cb = NoiseScaleCallback(tokens_per_row=16)
    args = EffiTrainingArguments(
        str(tmp_path), effi_optim="adamw", effi_schedule="cosine", per_device_train_batch_size=2,
        gradient_accumulation_steps=3, learning_rate=1e-3, max_steps=4, logging_steps=2, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    EffiTrainer(model=tiny_model("llama"), args=args, train_dataset=rows, callbacks=[cb]).train()
    assert [h["step"] for h in cb.history] == [1, 2, 3, 4]
    assert all(h["noise_scale/grad_sq"] > 0 and math.isfinite(h["noise_scale/b_simple"]) for h in cb.history)


def test_noise_dominated_step_logs_no_infinite_b_simple():
    cb = NoiseScaleCallback(ema=0.0)
    cb._update(1, g2=-0.5, trace=3.0)  # the unbiased |G|^2 estimate went negative
    assert cb.b_simple == math.inf
    logs = {"loss": 1.0}
    state = types.SimpleNamespace(global_step=1, log_history=[{"loss": 1.0, "step": 1}])
    cb.on_log(None, state, None, logs=logs)
    assert "noise_scale/b_simple" not in logs and logs["noise_scale/trace_cov"] == 3.0
    assert state.log_history[-1]["noise_scale/grad_sq"] == -0.5
