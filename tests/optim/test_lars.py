"""LARS against Alg. 1 of arXiv 1708.03888, computed by hand on tiny tensors; norms/biases are excluded."""

import math

import pytest
import torch

import hf_effi
import hf_effi.optim.lars  # noqa: F401  (registers "lars")
from hf_effi.optim.lars import LARS
from hf_effi.testing import tiny_model


def _norm(xs):
    return math.sqrt(sum(x * x for x in xs))


def _by_hand(w, grads, lrs, mom, eta, beta, excluded=False):
    v = [0.0] * len(w)
    for g, lr in zip(grads, lrs):
        if excluded:
            local, d = 1.0, g
        else:
            local = eta * _norm(w) / (_norm(g) + beta * _norm(w))
            d = [a + beta * b for a, b in zip(g, w)]
        v = [mom * a + lr * local * b for a, b in zip(v, d)]
        w = [a - b for a, b in zip(w, v)]
    return w


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_two_steps_match_algorithm_1_with_a_changing_lr(beta):
    w0 = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75]
    grads = [[0.1, -0.2, 0.3, 0.05, 0.0, 0.2], [-0.3, 0.1, 0.2, 0.2, 0.4, -0.1]]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64).reshape(2, 3))
    opt = LARS([{"params": [p], "weight_decay": beta}], lr=2.0, momentum=0.9, trust_coefficient=0.01)
    for i, (g, lr) in enumerate(zip(grads, (2.0, 1.0))):
        opt.param_groups[0]["lr"] = lr  # lr sits inside the momentum buffer (Alg. 1)
        p.grad = torch.tensor(g, dtype=torch.float64).reshape(2, 3)
        opt.step()
        expected = _by_hand(w0, grads[: i + 1], (2.0, 1.0), 0.9, 0.01, beta)
        torch.testing.assert_close(
            p.detach().flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0
        )


def test_no_decay_group_is_plain_momentum_sgd():
    w0, grads = [1.0, 2.0], [[0.5, -0.1], [0.1, 0.3]]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LARS([{"params": [p], "weight_decay": 0.5, "effi_role": "no_decay"}], lr=0.1)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _by_hand(w0, grads, (0.1, 0.1), 0.9, 1e-3, 0.5, excluded=True)
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_zero_gradient_or_weight_uses_local_rate_one():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    p.grad = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    LARS([p], lr=0.1).step()
    torch.testing.assert_close(p.detach(), -0.1 * p.grad)


def test_first_step_norm_is_lr_eta_weight_norm():
    p = torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    before = p.detach().clone()
    p.grad = 1e3 * torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    LARS([p], lr=2.0, trust_coefficient=1e-3).step()
    assert torch.linalg.vector_norm(p - before).item() == pytest.approx(2.0 * 1e-3 * before.norm().item(), rel=1e-9)


def test_registered_with_make():
    model = tiny_model("llama", vocab_size=64)
    opt = hf_effi.make_optimizer("lars", model, lr=1.0, weight_decay=1e-4, momentum=0.8)
    assert isinstance(opt, LARS) and opt.param_groups[0]["momentum"] == 0.8


@pytest.mark.parametrize("kwargs,match", [(dict(momentum=1.0), "momentum"), (dict(trust_coefficient=0), "trust")])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LARS([torch.nn.Parameter(torch.zeros(2))], **{"lr": 1.0, **kwargs})
