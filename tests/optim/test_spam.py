"""SPAM against hand-computed steps (arXiv 2501.06842): re-warm, spike clipping, momentum reset, sparse momentum,
weight decay on every entry, and a state that resumes bit for bit."""

import io
import math

import pytest
import torch

import hf_effi
import hf_effi.optim.spam  # noqa: F401  (registers "spam")
from hf_effi.optim.spam import SPAM, rewarm_multiplier
from hf_effi.testing import tiny_model

B1, B2, EPS = 0.9, 0.999, 1e-6


def _param(values):
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_rewarm_multiplier_is_a_cosine_from_001_to_1():
    assert rewarm_multiplier(0, 10) == pytest.approx(0.01)
    assert rewarm_multiplier(5, 10) == pytest.approx(1 - 0.99 * 0.5)
    assert rewarm_multiplier(10, 10) == rewarm_multiplier(400, 10) == 1.0
    assert rewarm_multiplier(0, 0) == 1.0


def test_first_step_is_adam_times_rewarm():
    p = _param([1.0, -2.0, 0.5])
    g = torch.tensor([0.3, -0.1, 0.02], dtype=torch.float64)
    p.grad = g.clone()
    SPAM([p], lr=0.1, rewarm_steps=4).step()
    # m_hat = g, v_hat = g**2 after one step; the multiplier at k = 0 is 0.01.
    expected = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) - 0.1 * 0.01 * g / (g.abs() + EPS)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def test_spike_is_clipped_to_sqrt_theta_v():
    theta = 4.0
    p = _param([0.0, 0.0])
    opt = SPAM([p], lr=1.0, threshold=theta, reset_interval=0, rewarm_steps=0, clip_delay=1)
    g1 = [0.1, 0.2]
    g2 = [5.0, 0.001]  # 25 > theta * v1[0] = 4e-5: a spike; 1e-6 < theta * v1[1] = 1.6e-4: kept
    p.grad = torch.tensor(g1, dtype=torch.float64)
    opt.step()
    w1 = [-g / (abs(g) + EPS) for g in g1]
    v1 = [(1 - B2) * g * g for g in g1]
    m1 = [(1 - B1) * g for g in g1]
    p.grad = torch.tensor(g2, dtype=torch.float64)
    opt.step()
    clipped = [math.copysign(math.sqrt(theta * v), g) if g * g > theta * v else g for g, v in zip(g2, v1)]
    assert clipped[0] == pytest.approx(math.sqrt(theta * v1[0])) and clipped[1] == g2[1]
    m2 = [B1 * m + (1 - B1) * g for m, g in zip(m1, clipped)]
    v2 = [B2 * v + (1 - B2) * g * g for v, g in zip(v1, clipped)]
    w2 = [w - (m / (1 - B1**2)) / (math.sqrt(v / (1 - B2**2)) + EPS) for w, m, v in zip(w1, m2, v2)]
    torch.testing.assert_close(p.detach(), torch.tensor(w2, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_no_clipping_before_clip_delay_and_with_threshold_zero():
    for kwargs in (dict(clip_delay=2), dict(threshold=0.0, clip_delay=1)):
        p, q = _param([0.0]), _param([0.0])
        spam = SPAM([p], lr=1.0, reset_interval=0, rewarm_steps=0, **kwargs)
        adam = torch.optim.Adam([q], lr=1.0, eps=EPS)
        for g in (0.1, 50.0):
            p.grad = torch.tensor([g], dtype=torch.float64)
            q.grad = torch.tensor([g], dtype=torch.float64)
            spam.step()
            adam.step()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)


def test_momentum_reset_restarts_adam():
    p = _param([1.0, 1.0])
    opt = SPAM([p], lr=0.1, reset_interval=2, rewarm_steps=0, threshold=0.0)
    for g in ([0.5, -0.5], [0.2, 0.1]):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    before = p.detach().clone()
    g3 = torch.tensor([-0.3, 0.7], dtype=torch.float64)
    p.grad = g3.clone()
    opt.step()  # t = 3 = reset_interval + 1: fresh moments, bias correction from 1
    torch.testing.assert_close(opt.state[p]["exp_avg"], (1 - B1) * g3)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], (1 - B2) * g3 * g3)
    torch.testing.assert_close(p.detach(), before - 0.1 * g3 / (g3.abs() + EPS), rtol=1e-12, atol=1e-14)


def test_weight_decay_applies_to_every_entry_with_sparse_momentum():
    torch.manual_seed(0)
    w0 = torch.randn(8, 8, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = SPAM([{"params": [p], "weight_decay": 0.5}], lr=0.1, density=0.25, rewarm_steps=0, threshold=0.0)
    g = torch.randn(8, 8, dtype=torch.float64)
    p.grad = g.clone()
    opt.step()
    mask = opt.state[p]["mask"]
    assert mask.dtype == torch.bool and 0 < mask.sum() < 64
    assert opt.state[p]["exp_avg"].shape == (int(mask.sum()),)
    decayed = w0 * (1 - 0.1 * 0.5)
    expected = torch.where(mask, decayed - 0.1 * g / (g.abs() + EPS), decayed)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def test_sparse_mask_is_redrawn_at_reset_and_seeded():
    def masks(seed):
        p = torch.nn.Parameter(torch.zeros(16, 16))
        opt = SPAM([p], lr=0.1, density=0.5, reset_interval=2, rewarm_steps=0, clip_delay=1, seed=seed)
        out = []
        for _ in range(3):
            p.grad = torch.ones(16, 16)
            opt.step()
            out.append(opt.state[p]["mask"].clone())
        return out

    a, b, c = masks(0), masks(0), masks(1)
    assert torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])  # redrawn at t = 3
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert 0.3 < a[0].float().mean().item() < 0.7


def test_state_dict_resumes_bit_for_bit_across_a_reset():
    def run(steps, load=None):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 30).reshape(5, 6))
        opt = SPAM([p], lr=0.05, density=0.5, reset_interval=3, rewarm_steps=2, clip_delay=1)
        if load is not None:
            p.data.copy_(load[0])
            opt.load_state_dict(load[1])
        gen = torch.Generator().manual_seed(0)
        grads = [torch.randn(5, 6, generator=gen) for _ in range(8)]
        start = opt.state[p].get("step", 0) if opt.state[p] else 0
        for g in grads[start:steps]:
            p.grad = g.clone()
            opt.step()
        return p.detach().clone(), opt

    full, _ = run(8)
    half, opt = run(4)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    resumed, _ = run(8, load=(half, torch.load(buf, weights_only=True)))
    assert torch.equal(full, resumed)


def test_registered_with_make():
    model = tiny_model("llama", vocab_size=64)
    opt = hf_effi.make_optimizer("spam", model, lr=1e-3, weight_decay=0.1, reset_interval=200, density=0.5)
    assert isinstance(opt, SPAM) and opt.param_groups[0]["reset_interval"] == 200


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(density=0.0), "density"),
        (dict(density=1.5), "density"),
        (dict(reset_interval=10, rewarm_steps=20), "must not exceed reset_interval"),
        (dict(reset_interval=-1), "reset_interval"),
        (dict(threshold=-1.0), "threshold"),
        (dict(betas=(0.9,)), "betas"),
        (dict(seed=-3), "seed"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SPAM([torch.nn.Parameter(torch.zeros(2))], **{"lr": 1e-3, **kwargs})
