"""Schedule-free AdamW / SGD: the paper's three sequences by hand, train/eval modes, state, schedule checks."""

import io
import math

import pytest
import torch

import hf_effi
import hf_effi.optim.schedule_free  # noqa: F401  (registers the optimizers until hf_effi.optim imports it)
from hf_effi.optim.schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD, evaluation_weights, is_schedule_free
from hf_effi.testing import tiny_model

VOCAB = 64


def _quadratic_grad(y):
    """Gradient of 0.5 * ||A y - b||^2 for a fixed small A, b (scalars per coordinate: a * y - b, times a)."""
    a, b = [1.5, -0.5, 2.0], [1.0, 0.3, -0.2]
    return [ai * (ai * yi - bi) for ai, yi, bi in zip(a, y, b)]


def _by_hand(kind, w0, lr, beta, steps, *, beta2=0.999, eps=1e-8, wd=0.0, power=2.0):
    """The three-sequence update / Alg. 1 of arXiv 2405.15682 with explicit x, z, y lists."""
    x, z = list(w0), list(w0)
    v = [0.0] * len(w0)
    lr_max = weight_sum = 0.0
    for t in range(1, steps + 1):
        y = [(1 - beta) * zi + beta * xi for zi, xi in zip(z, x)]
        g = _quadratic_grad(y)
        if kind == "adamw":
            v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g)]
            d = [gi / (math.sqrt(vi) + eps) for gi, vi in zip(g, v)]
            gamma = lr * math.sqrt(1 - beta2**t)
        else:
            d, gamma = list(g), lr
        d = [di + wd * yi for di, yi in zip(d, y)]
        lr_max = max(lr_max, gamma)
        weight_sum += lr_max**power
        c = lr_max**power / weight_sum
        z = [zi - gamma * di for zi, di in zip(z, d)]
        x = [(1 - c) * xi + c * zi for xi, zi in zip(x, z)]
    y = [(1 - beta) * zi + beta * xi for zi, xi in zip(z, x)]
    return x, y, z


CASES = [
    ("sgd", lambda p: ScheduleFreeSGD([p], lr=0.2, momentum=0.9), dict(lr=0.2, beta=0.9)),
    (
        "sgd-wd",
        lambda p: ScheduleFreeSGD([{"params": [p], "weight_decay": 0.1}], lr=0.2),
        dict(lr=0.2, beta=0.9, wd=0.1),
    ),
    ("adamw", lambda p: ScheduleFreeAdamW([p], lr=0.05, betas=(0.8, 0.99)), dict(lr=0.05, beta=0.8, beta2=0.99)),
]


@pytest.mark.parametrize("name,build,hyper", CASES, ids=[c[0] for c in CASES])
def test_three_steps_match_the_papers_sequences(name, build, hyper):
    w0 = [0.5, -1.0, 2.0]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = build(p)
    for _ in range(3):
        p.grad = torch.tensor(_quadratic_grad(p.detach().tolist()), dtype=torch.float64)
        opt.step()
    x, y, z = _by_hand(name.split("-")[0], w0, steps=3, **hyper)
    f64 = dict(dtype=torch.float64)
    torch.testing.assert_close(p.detach(), torch.tensor(y, **f64), rtol=1e-10, atol=1e-12)  # train mode holds y
    torch.testing.assert_close(opt.state[p]["z"], torch.tensor(z, **f64), rtol=1e-10, atol=1e-12)
    opt.eval()
    torch.testing.assert_close(p.detach(), torch.tensor(x, **f64), rtol=1e-10, atol=1e-12)  # eval mode holds x
    opt.eval()  # idempotent
    torch.testing.assert_close(p.detach(), torch.tensor(x, **f64), rtol=1e-10, atol=1e-12)
    opt.train()
    torch.testing.assert_close(p.detach(), torch.tensor(y, **f64), rtol=1e-10, atol=1e-12)


def test_step_in_eval_mode_and_decaying_lr_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    opt = ScheduleFreeSGD([p], lr=0.1)
    opt.eval()
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="train()"):
        opt.step()
    model = tiny_model("llama", vocab_size=VOCAB)
    # make() refuses this pair up front; built by hand, the optimizer still catches the decay at step().
    opt = hf_effi.make_optimizer("schedule_free_adamw", model, lr=1e-3)
    sched = hf_effi.make_scheduler("cosine", opt, num_training_steps=10)
    ids = torch.arange(12).view(1, 12)
    with pytest.raises(ValueError, match="constant learning rate"):
        for _ in range(10):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()


def test_constant_schedule_with_warmup_is_accepted_and_lowers_held_out_loss():
    model = tiny_model("llama", vocab_size=VOCAB)
    opt, sched = hf_effi.make(
        "schedule_free_adamw", model, lr=1e-2, num_training_steps=30, schedule="constant", warmup=3, weight_decay=0.1
    )
    assert is_schedule_free(opt)
    gen = torch.Generator().manual_seed(0)
    batch = lambda: (torch.randint(0, VOCAB, (8, 1), generator=gen) + torch.arange(16)) % VOCAB  # noqa: E731
    held_out = batch()
    with torch.no_grad(), evaluation_weights(opt):
        start = model(input_ids=held_out, labels=held_out).loss.item()
    for _ in range(30):
        opt.train()
        ids = batch()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert opt.train_mode
    with torch.no_grad(), evaluation_weights(opt):
        assert not opt.train_mode
        end = model(input_ids=held_out, labels=held_out).loss.item()
    assert opt.train_mode  # restored
    assert end < 0.8 * start, f"held-out loss {start:.3f} -> {end:.3f}"


@pytest.mark.parametrize("name", ["schedule_free_adamw", "schedule_free_sgd"])
def test_state_dict_is_weights_only_and_records_the_mode(name):
    model = tiny_model("llama", vocab_size=VOCAB)
    opt = hf_effi.make_optimizer(name, model, lr=1e-2)
    ids = torch.arange(12).view(1, 12)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.eval()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert all(g["train_mode"] is False and g["k"] == 1 for g in saved["param_groups"])
    keys = {"z", "exp_avg_sq"} if name == "schedule_free_adamw" else {"z"}
    assert all(set(s) == keys for s in saved["state"].values())
    twin = tiny_model("llama", vocab_size=VOCAB)
    twin.load_state_dict(model.state_dict())  # x, as a checkpoint saved in eval mode holds
    twin_opt = hf_effi.make_optimizer(name, twin, lr=1e-2)
    twin_opt.load_state_dict(saved)
    opt.train()
    twin_opt.train()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_bad_arguments_are_named():
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="momentum"):
        ScheduleFreeSGD(p, lr=0.1, momentum=0.0)
    with pytest.raises(ValueError, match="betas"):
        ScheduleFreeAdamW(p, betas=(0.9,))
    with pytest.raises(ValueError, match="warmup_steps"):
        ScheduleFreeAdamW(p, warmup_steps=-1)
    with pytest.raises(ValueError, match="layerwise"):
        hf_effi.make_optimizer("schedule_free_adamw", tiny_model("llama", vocab_size=VOCAB), lr=1e-3, layerwise=True)


def test_make_refuses_a_decaying_schedule_for_schedule_free():
    from hf_effi import make
    from hf_effi.testing import tiny_model

    with pytest.raises(ValueError, match="schedule='constant'"):
        make("schedule_free_adamw", tiny_model(), lr=1e-3, num_training_steps=10, schedule="cosine")
    make("schedule_free_adamw", tiny_model(), lr=1e-3, num_training_steps=10, schedule="constant", warmup=2)
