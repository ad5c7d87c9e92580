"""LAMB against Alg. 2 of arXiv 1904.00962, computed by hand on tiny tensors; norms/biases are excluded."""

import math

import pytest
import torch

import hf_effi
import hf_effi.optim.lamb  # noqa: F401  (registers "lamb")
from hf_effi.optim.lamb import LAMB
from hf_effi.testing import tiny_model

B1, B2, EPS = 0.9, 0.999, 1e-6


def _norm(xs):
    return math.sqrt(sum(x * x for x in xs))


def _by_hand(w, grads, lr, wd, excluded=False):
    """Alg. 2 on a flat list of floats: Adam direction r, plus lambda w, times ||w|| / ||r + lambda w||."""
    m = [0.0] * len(w)
    v = [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        m = [B1 * a + (1 - B1) * b for a, b in zip(m, g)]
        v = [B2 * a + (1 - B2) * b * b for a, b in zip(v, g)]
        r = [(a / (1 - B1**t)) / (math.sqrt(b / (1 - B2**t)) + EPS) for a, b in zip(m, v)]
        if excluded:
            w = [x - lr * y for x, y in zip(w, r)]
            continue
        r = [y + wd * x for x, y in zip(w, r)]
        ratio = _norm(w) / _norm(r)
        w = [x - lr * ratio * y for x, y in zip(w, r)]
    return w


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_two_steps_match_algorithm_2(wd):
    w0 = [0.5, -1.0, 2.0, 0.25]
    grads = [[0.1, -0.2, 0.3, 0.05], [-0.3, 0.1, 0.2, 0.2]]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64).reshape(2, 2))
    opt = LAMB([{"params": [p], "weight_decay": wd}], lr=0.1)
    for i, g in enumerate(grads):
        p.grad = torch.tensor(g, dtype=torch.float64).reshape(2, 2)
        opt.step()
        expected = _by_hand(w0, grads[: i + 1], lr=0.1, wd=wd)
        torch.testing.assert_close(
            p.detach().flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0
        )


def test_no_decay_group_takes_the_plain_adam_step_without_decay():
    w0, grads = [1.0, 2.0, 3.0], [[0.5, -0.1, 0.2], [0.1, 0.1, -0.4]]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LAMB([{"params": [p], "weight_decay": 0.5, "effi_role": "no_decay"}], lr=0.01)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _by_hand(w0, grads, lr=0.01, wd=0.5, excluded=True)
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_trust_ratio_is_one_for_a_zero_weight():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    p.grad = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64)
    LAMB([p], lr=0.1).step()
    torch.testing.assert_close(p.detach(), -0.1 * p.grad / (p.grad.abs() + EPS))


def test_step_norm_is_lr_times_weight_norm():
    # The defining property: for a "decay" tensor the step's norm is lr * ||w|| whatever the gradient's scale.
    for scale in (1e-4, 1e4):
        p = torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        before = p.detach().clone()
        p.grad = scale * torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        LAMB([p], lr=0.01).step()
        assert torch.linalg.vector_norm(p - before).item() == pytest.approx(0.01 * before.norm().item(), rel=1e-9)


def test_make_excludes_norms_and_biases():
    model = tiny_model("llama", vocab_size=64, attention_bias=True)
    opt = hf_effi.make_optimizer("lamb", model, lr=1e-3, weight_decay=0.1)
    roles = {g["effi_role"]: g for g in opt.param_groups}
    assert all("norm" in n or n.endswith("bias") for n in roles["no_decay"]["param_names"])
    assert roles["decay"]["weight_decay"] == 0.1


def test_bad_input():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="betas"):
        LAMB([p], lr=1e-3, betas=(0.9, 1.2))
    with pytest.raises(ValueError, match="eps"):
        LAMB([p], lr=1e-3, eps=0.0)
