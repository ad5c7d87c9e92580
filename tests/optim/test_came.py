"""CAME against Alg. 1 of arXiv 2307.02047, computed here by hand with sums (the paper's form) on tiny tensors."""

import math

import pytest
import torch

import hf_effi
import hf_effi.optim.came  # noqa: F401  (registers "came")
from hf_effi.optim.came import CAME
from hf_effi.testing import tiny_model

B1, B2, B3 = 0.9, 0.999, 0.9999
E1, E2 = 1e-30, 1e-16


def _step_by_hand(w, g, st, lr, d=1.0, wd=0.0):
    """One step of Alg. 1 for a list-of-lists matrix, with row/column *sums* and plain Python floats."""
    n, m = len(g), len(g[0])
    sq = [[g[i][j] ** 2 + E1 for j in range(m)] for i in range(n)]
    st["r"] = [B2 * st["r"][i] + (1 - B2) * sum(sq[i]) for i in range(n)]
    st["c"] = [B2 * st["c"][j] + (1 - B2) * sum(sq[i][j] for i in range(n)) for j in range(m)]
    v = [[st["r"][i] * st["c"][j] / sum(st["r"]) for j in range(m)] for i in range(n)]
    u = [[g[i][j] / math.sqrt(v[i][j]) for j in range(m)] for i in range(n)]
    rms = math.sqrt(sum(x * x for row in u for x in row) / (n * m))
    u = [[x / max(1.0, rms / d) for x in row] for row in u]
    st["m"] = [[B1 * st["m"][i][j] + (1 - B1) * u[i][j] for j in range(m)] for i in range(n)]
    big_u = [[(u[i][j] - st["m"][i][j]) ** 2 + E2 for j in range(m)] for i in range(n)]
    st["R"] = [B3 * st["R"][i] + (1 - B3) * sum(big_u[i]) for i in range(n)]
    st["C"] = [B3 * st["C"][j] + (1 - B3) * sum(big_u[i][j] for i in range(n)) for j in range(m)]
    s = [[st["R"][i] * st["C"][j] / sum(st["R"]) for j in range(m)] for i in range(n)]
    return [[w[i][j] * (1 - lr * wd) - lr * st["m"][i][j] / math.sqrt(s[i][j]) for j in range(m)] for i in range(n)]


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_two_steps_match_algorithm_1(wd):
    w0 = [[0.5, -1.0, 2.0], [0.25, 0.75, -0.5]]
    grads = [[[0.1, -0.2, 0.3], [0.05, 0.4, -0.6]], [[-0.3, 0.1, 0.2], [0.2, -0.1, 0.5]]]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = CAME([{"params": [p], "weight_decay": wd}], lr=0.1)
    st = {"r": [0.0] * 2, "c": [0.0] * 3, "R": [0.0] * 2, "C": [0.0] * 3, "m": [[0.0] * 3 for _ in range(2)]}
    w = w0
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        w = _step_by_hand(w, g, st, lr=0.1, wd=wd)
        torch.testing.assert_close(p.detach(), torch.tensor(w, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert opt.state[p]["step"] == 2


def test_update_clipping_uses_rms_over_d():
    # One step: u = g / |g| entrywise up to the factored scale; with d = 0.1, RMS(u)/d > 1 shrinks the update.
    g = [[1.0, 2.0], [3.0, 4.0]]
    for d in (1.0, 0.1):
        p = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
        p.grad = torch.tensor(g, dtype=torch.float64)
        CAME([p], lr=1.0, clip_threshold=d).step()
        st = {"r": [0.0] * 2, "c": [0.0] * 2, "R": [0.0] * 2, "C": [0.0] * 2, "m": [[0.0] * 2 for _ in range(2)]}
        expected = _step_by_hand([[0.0, 0.0], [0.0, 0.0]], g, st, lr=1.0, d=d)
        torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_vector_keeps_full_second_moment_and_steps_with_momentum():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = CAME([p], lr=0.01)
    g1, g2 = torch.tensor([0.2, -0.4, 0.1]), torch.tensor([0.1, 0.3, -0.2])
    w, v, m = p.detach().clone(), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for g in (g1.double(), g2.double()):
        p.grad = g
        opt.step()
        v = B2 * v + (1 - B2) * (g * g + E1)
        u = g / v.sqrt()
        u = u / max(1.0, (u.pow(2).mean().sqrt()).item())
        m = B1 * m + (1 - B1) * u
        w = w - 0.01 * m  # no confidence factor for vectors (the module docstring's choice)
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}


def test_state_is_factored_and_about_half_of_adamw():
    p = torch.nn.Parameter(torch.randn(64, 32))
    p.grad = torch.randn(64, 32)
    opt = CAME([p], lr=1e-3)
    opt.step()
    shapes = {k: tuple(v.shape) for k, v in opt.state[p].items() if torch.is_tensor(v)}
    assert shapes == {
        "exp_avg": (64, 32),
        "exp_avg_sq_row": (64,),
        "exp_avg_sq_col": (32,),
        "exp_avg_res_row": (64,),
        "exp_avg_res_col": (32,),
    }


def test_registered_and_passes_hyperparameters():
    model = tiny_model("llama", vocab_size=64)
    opt = hf_effi.make_optimizer("came", model, lr=2e-4, weight_decay=0.1, betas=(0.8, 0.99, 0.999))
    assert isinstance(opt, CAME)
    roles = {g["effi_role"]: g for g in opt.param_groups}
    assert roles["decay"]["weight_decay"] == 0.1 and roles["no_decay"]["weight_decay"] == 0.0
    assert roles["decay"]["betas"] == (0.8, 0.99, 0.999) and roles["decay"]["eps"] == (1e-30, 1e-16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(betas=(0.9, 0.999)), "three numbers"),
        (dict(betas=(0.9, 1.0, 0.9999)), "three numbers"),
        (dict(eps=1e-30), "two positive"),
        (dict(clip_threshold=0.0), "clip_threshold"),
        (dict(lr=-1.0), "lr"),
    ],
)
def test_bad_input(kwargs, match):
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=match):
        CAME([p], **{"lr": 1e-3, **kwargs})
