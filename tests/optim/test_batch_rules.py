"""Batch-size rules (arXiv 2507.07101, 2307.13813) and ``make(batch_size=..., reference_batch_size=...)``."""

import math

import pytest
import torch

import hf_effi
import hf_effi.optim.came  # noqa: F401
import hf_effi.optim.lamb  # noqa: F401
import hf_effi.optim.lars  # noqa: F401
import hf_effi.optim.spam  # noqa: F401
from hf_effi.optim.batch_rules import BATCH_SCALED, scale_beta2, scale_ema
from hf_effi.testing import tiny_model


def test_half_life_in_tokens_is_kept():
    beta2 = scale_beta2(0.95, 512, 1)
    assert beta2 == pytest.approx(0.95 ** (1 / 512))
    assert round(beta2, 4) == 0.9999  # the example of Marek et al.
    half_life_steps = lambda b: math.log(0.5) / math.log(b)  # noqa: E731
    # half-life in samples = steps * batch is the same at both batch sizes
    assert half_life_steps(0.999) * 32 == pytest.approx(half_life_steps(scale_beta2(0.999, 32, 256)) * 256)
    assert scale_beta2(0.999, 64, 64) == 0.999
    assert scale_ema(0.9, 3) == pytest.approx(0.729)
    assert scale_ema(0.0, 2) == 0.0


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: scale_beta2(1.0, 8, 16), "beta2"),
        (lambda: scale_beta2(-0.1, 8, 16), "beta2"),
        (lambda: scale_beta2(0.99, 0, 16), "batch_ref"),
        (lambda: scale_beta2(0.99, 8, float("inf")), "batch_new"),
        (lambda: scale_ema(0.9, 0), "k"),
        (lambda: scale_ema(True, 2), "momentum"),
    ],
)
def test_bad_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()


EXPECTED_SCALED = [
    ("adamw", {}, lambda g, r: g["betas"] == (0.9, 0.999**r)),
    ("spam", {"betas": (0.8, 0.99)}, lambda g, r: g["betas"] == (0.8, 0.99**r)),
    ("lamb", {}, lambda g, r: g["betas"] == (0.9, 0.999**r)),
    ("came", {}, lambda g, r: g["betas"] == (0.9, 0.999**r, 0.9999**r)),
]


@pytest.mark.parametrize("name,kwargs,check", EXPECTED_SCALED, ids=[c[0] for c in EXPECTED_SCALED])
@pytest.mark.parametrize("layerwise", [False, True])
def test_make_scales_the_second_moment_decays(name, kwargs, check, layerwise):
    model = tiny_model("llama", vocab_size=64)
    opt, _ = hf_effi.make(
        name,
        model,
        lr=1e-3,
        num_training_steps=4,
        batch_size=256,
        reference_batch_size=32,
        layerwise=layerwise,
        **kwargs,
    )
    assert all(check(g, 8.0) for g in opt.param_groups)
    if layerwise:
        opt.remove_hooks()


def test_make_without_batch_sizes_keeps_defaults():
    opt, _ = hf_effi.make("came", tiny_model("llama", vocab_size=64), lr=1e-3, num_training_steps=4)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999, 0.9999)


@pytest.mark.parametrize("name", ["sgd", "lars", "adafactor"])
def test_optimizers_without_a_second_moment_ema_are_refused(name):
    with pytest.raises(ValueError, match="no second-moment EMA"):
        hf_effi.make(
            name,
            tiny_model("llama", vocab_size=64),
            lr=1e-3,
            num_training_steps=4,
            batch_size=8,
            reference_batch_size=64,
        )


def test_only_one_batch_size_is_refused():
    model = tiny_model("llama", vocab_size=64)
    with pytest.raises(ValueError, match="give both"):
        hf_effi.make("adamw", model, lr=1e-3, num_training_steps=4, batch_size=8)
    with pytest.raises(ValueError, match="reference_batch_size"):
        hf_effi.make("adamw", model, lr=1e-3, num_training_steps=4, batch_size=8, reference_batch_size=-1)
    assert {"adamw", "came", "lamb", "spam"} <= set(BATCH_SCALED)


def test_scaled_betas_reach_the_update():
    """Same gradients twice: the second step of AdamW differs exactly as torch's AdamW with the scaled beta2."""
    model = tiny_model("llama", vocab_size=64)
    ref = tiny_model("llama", vocab_size=64)
    opt, _ = hf_effi.make(
        "adamw", model, lr=1e-2, num_training_steps=4, batch_size=1, reference_batch_size=4, foreach=False
    )
    torch_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(0.9, 0.999**0.25), weight_decay=0.0, foreach=False)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    for m, o in ((model, opt), (ref, torch_opt)):
        for _ in range(2):
            m(input_ids=ids, labels=ids).loss.backward()
            o.step()
            o.zero_grad()
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), n
