"""GSNRCallback: exact per-group values from the hooks, a known GSNR on linear regression inside Trainer, only the
measured steps pay, errors."""

import types

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_effi.trainers.gsnr import GSNRCallback, layer_of


class LinearRegression(nn.Module):
    """``loss = 0.5 * mean((x . w - y)^2)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x, y):
        return {"loss": 0.5 * ((x @ self.w - y) ** 2).mean()}


def _drive(cb, model, k, micro):
    """Run one optimizer step's worth of micro-batches as Trainer does; return each micro-batch's gradients."""
    args = types.SimpleNamespace(gradient_accumulation_steps=k)
    state = types.SimpleNamespace(global_step=0, log_history=[])
    cb.on_train_begin(args, state, None, model=model)
    cb.on_step_begin(args, state, None)
    grads = []
    for _ in range(k):
        x, t = torch.randn(micro, 5), torch.randn(micro, 3)
        before = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
        (nn.functional.mse_loss(model(x), t) / k).backward()
        grads.append({n: p.grad - before[n] for n, p in model.named_parameters()})
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # clipping after backward must not change the result
    cb.on_pre_optimizer_step(args, state, None)
    return grads


def _explicit(grads, names):
    g = torch.stack([torch.cat([gr[n].reshape(-1) for n in names]) for gr in grads]).double()  # [M, P]
    mean, var = g.mean(0), g.var(0, unbiased=True)
    ok = var > 0
    return (mean**2).sum() / var.sum(), (mean[ok] ** 2 / var[ok]).mean()


@pytest.mark.parametrize("reduction", ["ratio_of_sums", "mean_of_ratios"])
def test_values_equal_the_explicit_formula_per_group(reduction):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    cb = GSNRCallback(every_n_steps=1, reduction=reduction)
    grads = _drive(cb, model, k=4, micro=3)
    entry = cb.history[-1]
    assert entry["step"] == 1 and set(entry) == {"step", "gsnr/0", "gsnr/2", "gsnr/all"}
    pick = 0 if reduction == "ratio_of_sums" else 1
    for group, names in (("0", ["0.weight", "0.bias"]), ("2", ["2.weight", "2.bias"])):
        assert entry[f"gsnr/{group}"] == pytest.approx(_explicit(grads, names)[pick].item(), rel=1e-5)
    all_names = [n for n, _ in model.named_parameters()]
    assert entry["gsnr/all"] == pytest.approx(_explicit(grads, all_names)[pick].item(), rel=1e-5)
    assert not cb._handles


def test_group_by_parameter_and_by_function():
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    cb = GSNRCallback(every_n_steps=1, group_by="parameter")
    _drive(cb, model, k=2, micro=2)
    assert {k for k in cb.history[-1] if k != "step"} == {"gsnr/0.weight", "gsnr/0.bias", "gsnr/2.weight",
                                                           "gsnr/2.bias", "gsnr/all"}  # fmt: skip
    cb = GSNRCallback(every_n_steps=1, group_by=lambda name: name.split(".")[1])
    _drive(cb, model, k=2, micro=2)
    assert {k for k in cb.history[-1] if k != "step"} == {"gsnr/weight", "gsnr/bias", "gsnr/all"}


def test_layer_names():
    assert layer_of("model.layers.11.self_attn.q_proj.weight") == "model.layers.11"
    assert layer_of("module.model.layers.0.mlp.up_proj.weight") == "model.layers.0"
    assert layer_of("model.embed_tokens.weight") == "model.embed_tokens"
    assert layer_of("lm_head.weight") == "lm_head"


def test_known_gsnr_of_linear_regression_inside_trainer(tmp_path):
    # At w = 0 with x ~ N(0, I_8), y = x . w* + eps (|w*| = 1, sd 1): per-row gradient mean G = -w*, |G|^2 = 1,
    # trace of its covariance 8 * (1 + 1) + 1 = 17. Micro-batches of b rows, M of them: the plug-in numerator
    # estimates |G|^2 + 17 / (b M), the denominator 17 / b: GSNR = (1 + 17/32) / 4.25 = 0.36 for b = 4, M = 8.
    dim, micro, k, steps = 8, 4, 8, 60
    g = torch.Generator().manual_seed(0)
    x = torch.randn(micro * k * steps, dim, generator=g)
    y = x[:, 0] + torch.randn(len(x), generator=g)
    data = [{"x": x[i], "y": y[i]} for i in range(len(x))]
    cb = GSNRCallback(every_n_steps=1)
    args = TrainingArguments(
        str(tmp_path), per_device_train_batch_size=micro, gradient_accumulation_steps=k, learning_rate=0.0,
        max_steps=steps, logging_steps=20, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
        max_grad_norm=1.0, seed=0,
    )  # fmt: skip
    Trainer(model=LinearRegression(dim), args=args, train_dataset=data, callbacks=[cb]).train()
    values = [h["gsnr/all"] for h in cb.history]
    assert len(values) == steps
    assert sum(values) / steps == pytest.approx((1 + 17 / (micro * k)) / (17 / micro), rel=0.2)


def test_only_measured_steps_are_hooked_and_values_reach_the_logs(tmp_path):
    from transformers import TrainerCallback

    from hf_effi.testing import tiny_model

    ids = (torch.arange(16) * 3 + torch.arange(16)[:, None]) % 64
    rows = [{"input_ids": r, "labels": r} for r in ids]
    cb = GSNRCallback(every_n_steps=2)
    hooked = []

    class Probe(TrainerCallback):  # records, at each optimizer step, whether the GSNR hooks were registered
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            hooked.append((state.global_step + 1, bool(cb._handles)))

    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=4, logging_steps=2, report_to="none", save_strategy="no", use_cpu=True,
                             disable_tqdm=True)  # fmt: skip
    trainer = Trainer(model=tiny_model("llama", vocab_size=64), args=args, train_dataset=rows, callbacks=[Probe(), cb])
    trainer.train()
    assert [h["step"] for h in cb.history] == [2, 4]
    assert hooked == [(1, False), (2, True), (3, False), (4, True)]  # hooks live only during measured steps
    assert not cb._handles
    assert {"gsnr/model.layers.0", "gsnr/model.layers.1", "gsnr/model.embed_tokens"} <= set(cb.history[-1])
    logged = [h for h in trainer.state.log_history if "gsnr/all" in h]
    assert [h["step"] for h in logged] == [2, 4]
    assert logged[-1]["gsnr/model.layers.1"] == cb.history[-1]["gsnr/model.layers.1"]


def test_needs_gradient_accumulation(tmp_path):
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to="none",
                             use_cpu=True, disable_tqdm=True, save_strategy="no")  # fmt: skip
    data = [{"x": torch.randn(3), "y": torch.tensor(0.0)} for _ in range(8)]
    with pytest.raises(ValueError, match="gradient_accumulation_steps >= 2"):
        Trainer(model=LinearRegression(3), args=args, train_dataset=data, callbacks=[GSNRCallback()]).train()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"group_by": "block"}, "group_by"),
        ({"reduction": "mean"}, "reduction"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GSNRCallback(**kwargs)
