"""The subspace optimizers through hf_effi.make_optimizer on tiny Llamas: full rank equals AdamW, every method
lowers held-out loss, state is tensors and resumes exactly, layer-wise equals whole-model, refreshes are staggered,
and bad input gets clear errors."""

import copy
import io
import math

import pytest
import torch

import hf_effi
import hf_effi.optim.subspace  # noqa: F401  (registers the names)
from hf_effi.optim.subspace import SUBSPACE_OPTIMIZERS, GaLoreAdamW, refresh_offset
from hf_effi.testing import tiny_model
from hf_effi.utils import optimizer_state_bytes

VOCAB = 64
# Small enough for the tiny Llama (hidden 64, k/v 32 x 64): every rank <= 32.
KWARGS = {
    "galore_adamw": dict(rank=8, update_proj_gap=4),
    "fira_adamw": dict(rank=8, update_proj_gap=4),
    "apollo_adamw": dict(rank=8, update_proj_gap=4),
    "apollo_mini": dict(update_proj_gap=4),
    "frugal": dict(density=0.25, update_proj_gap=4),
    "gwt_adamw": dict(levels=2),
    "grass_adamw": dict(rank=8, update_proj_gap=4),
}
LR = {"apollo_mini": 3e-3, "frugal": 3e-3}


def batches(n, *, seed, rows=8, seq=16):
    """Sequences counting up by a per-row stride mod VOCAB: learnable, so held-out loss can fall."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (rows, 1), generator=gen)
        stride = torch.randint(1, 4, (rows, 1), generator=gen)
        out.append((start + stride * torch.arange(seq)) % VOCAB)
    return out


def train(model, optimizer, data, *, layerwise=False):
    for ids in data:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def held_out_loss(model):
    with torch.no_grad():
        return sum(model(input_ids=ids, labels=ids).loss.item() for ids in batches(4, seed=99)) / 4


def test_every_name_is_registered():
    available = hf_effi.available()["optimizers"]
    for name in (*SUBSPACE_OPTIMIZERS, "galore_adamw_8bit"):
        assert name in available


def square_llama():
    # Every projected matrix is 64 x 64, so rank 64 is full rank everywhere.
    return tiny_model("llama", vocab_size=VOCAB, num_key_value_heads=4, intermediate_size=64)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("galore_adamw", dict(rank=64, scale=1.0, update_proj_gap=2)),
        ("fira_adamw", dict(rank=64, scale=1.0, update_proj_gap=2)),
        ("grass_adamw", dict(rank=64, scale=1.0, update_proj_gap=2)),
        ("frugal", dict(density=1.0, update_proj_gap=2)),
    ],
)
def test_full_rank_equals_adamw_bit_for_bit(name, kwargs):
    ref_model, model = square_llama(), square_llama()
    ref = torch.optim.AdamW(
        [
            {"params": [p for n, p in ref_model.named_parameters() if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for n, p in ref_model.named_parameters() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=1e-2,
        foreach=False,
    )
    opt = hf_effi.make_optimizer(name, model, lr=1e-2, weight_decay=0.1, **kwargs)
    assert any(g["effi_role"] == "target" for g in opt.param_groups)
    data = batches(6, seed=0)
    train(ref_model, ref, data)
    train(model, opt, data)
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.equal(p, q), f"{name}: {n} differs from AdamW at full rank"


def test_orthogonal_full_rank_basis_would_not_equal_adamw():
    # Why full rank must be the identity: Adam in a rotated basis is a different optimizer.
    model, ref_model = square_llama(), square_llama()
    opt = hf_effi.make_optimizer("galore_adamw", model, lr=1e-2, rank=63, scale=1.0)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0.0, foreach=False)
    data = batches(3, seed=0)
    train(model, opt, data)
    train(ref_model, ref, data)
    diff = max((p - q).abs().max().item() for p, q in zip(model.parameters(), ref_model.parameters()))
    assert diff > 1e-4


@pytest.mark.parametrize("name", SUBSPACE_OPTIMIZERS)
def test_each_method_lowers_held_out_loss(name):
    model = tiny_model("llama", vocab_size=VOCAB)
    opt = hf_effi.make_optimizer(name, model, lr=LR.get(name, 1e-2), weight_decay=0.01, **KWARGS[name])
    before = held_out_loss(model)
    train(model, opt, batches(25, seed=1))
    after = held_out_loss(model)
    assert after < before - 0.5, f"{name}: held-out loss {before:.3f} -> {after:.3f}"
    assert math.isfinite(after)


@pytest.mark.parametrize("name", SUBSPACE_OPTIMIZERS)
def test_state_is_tensors_and_resumes_exactly(name):
    model = tiny_model("llama", vocab_size=VOCAB)
    opt = hf_effi.make_optimizer(name, model, lr=LR.get(name, 1e-2), weight_decay=0.1, **KWARGS[name])
    data = batches(10, seed=2)
    train(model, opt, data[:5])
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what Trainer does on resume

    resumed_model = copy.deepcopy(model)
    resumed = hf_effi.make_optimizer(name, resumed_model, lr=LR.get(name, 1e-2), weight_decay=0.1, **KWARGS[name])
    resumed.load_state_dict(saved)
    train(model, opt, data[5:])  # crosses refreshes at gap 4
    train(resumed_model, resumed, data[5:])
    for (n, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), f"{name}: {n} differs after resume"


@pytest.mark.parametrize("name", SUBSPACE_OPTIMIZERS)
def test_layerwise_equals_whole_model(name):
    whole_model, lw_model = tiny_model("llama", vocab_size=VOCAB), tiny_model("llama", vocab_size=VOCAB)
    kwargs = dict(lr=LR.get(name, 1e-2), weight_decay=0.1, **KWARGS[name])
    whole = hf_effi.make_optimizer(name, whole_model, **kwargs)
    layerwise = hf_effi.make_optimizer(name, lw_model, layerwise=True, **kwargs)
    roles = {inner.param_groups[0]["effi_role"] for inner in layerwise._inners}
    assert roles == {"target", "decay", "no_decay"}
    assert all(
        len(inner.param_groups) == 1 and len(inner.param_groups[0]["params"]) == 1 for inner in layerwise._inners
    )
    data = batches(6, seed=3)
    train(whole_model, whole, data)
    train(lw_model, layerwise, data)
    for (n, p), q in zip(whole_model.named_parameters(), lw_model.parameters()):
        assert torch.equal(p, q), f"{name}: {n} differs between layer-wise and whole-model"
    layerwise.remove_hooks()


def test_refreshes_are_staggered_by_name():
    model = tiny_model("llama", vocab_size=VOCAB)
    gap = 5
    opt = hf_effi.make_optimizer("galore_adamw", model, lr=1e-3, rank=4, update_proj_gap=gap)
    target = next(g for g in opt.param_groups if g["effi_role"] == "target")
    seen = {n: [] for n in target["param_names"]}
    previous = {}
    for t, ids in enumerate(batches(12, seed=4), start=1):
        train(model, opt, [ids])
        for n, p in zip(target["param_names"], target["params"]):
            proj = opt.state[p]["projector"]
            if n not in previous or not torch.equal(previous[n], proj):
                seen[n].append(t)
            previous[n] = proj.clone()
    for n, steps in seen.items():
        o = refresh_offset(n, gap)
        assert steps == [1] + [t for t in range(2, 13) if (t - 1 + o) % gap == 0], n
    assert len({tuple(s) for s in seen.values()}) > 1, "every matrix refreshed on the same steps"


def test_unstaggered_refreshes_follow_the_papers_schedule():
    model = tiny_model("llama", vocab_size=VOCAB)
    opt = hf_effi.make_optimizer("galore_adamw", model, lr=1e-3, rank=4, update_proj_gap=5, stagger=False)
    train(model, opt, batches(11, seed=4))
    target = next(g for g in opt.param_groups if g["effi_role"] == "target")
    assert {opt.state[p]["refreshes"] for p in target["params"]} == {3}  # steps 1, 6, 11


def test_random_projection_is_stored_as_a_seed():
    model = tiny_model("llama", vocab_size=VOCAB)
    opt = hf_effi.make_optimizer("apollo_mini", model, lr=1e-3)
    train(model, opt, batches(1, seed=5))
    target = next(g for g in opt.param_groups if g["effi_role"] == "target")
    state = opt.state_dict()["state"]
    first = opt.param_groups.index(target)
    index = sum(len(g["params"]) for g in opt.param_groups[:first])
    entry = state[index]
    assert isinstance(entry["proj_seed"], int)
    assert sorted(k for k, v in entry.items() if torch.is_tensor(v) and v.numel() > 1) == ["exp_avg", "exp_avg_sq"]


def test_apollo_mini_state_is_about_eight_bytes_over_the_short_side():
    model = tiny_model("llama", vocab_size=VOCAB)
    opt = hf_effi.make_optimizer("apollo_mini", model, lr=1e-3)
    train(model, opt, batches(1, seed=6))
    target = next(g for g in opt.param_groups if g["effi_role"] == "target")
    for p in target["params"]:
        per_param = optimizer_state_bytes(type("S", (), {"state": {p: opt.state[p]}})()) / p.numel()
        s = min(p.shape)
        assert 8 / s <= per_param <= 8 / s + 16 / p.numel()  # two [1, l] moments + two 0-d tensors


def test_bf16_parameters_keep_float32_moments_through_a_checkpoint():
    model = tiny_model("llama", vocab_size=VOCAB).to(torch.bfloat16)
    opt = hf_effi.make_optimizer("galore_adamw", model, lr=1e-3, rank=4)
    train(model, opt, batches(2, seed=7))
    fresh = hf_effi.make_optimizer("galore_adamw", copy.deepcopy(model), lr=1e-3, rank=4)
    fresh.load_state_dict(opt.state_dict())
    target = next(g for g in fresh.param_groups if g["effi_role"] == "target")
    assert fresh.state[target["params"][0]]["exp_avg"].dtype == torch.float32


# -- bad input --------------------------------------------------------------------------------------------------


def test_rank_larger_than_a_matrix_dimension_is_refused():
    model = tiny_model("llama", vocab_size=VOCAB)
    with pytest.raises(ValueError, match=r"rank=40 is larger than the short side \(32\).*k_proj.*rank<=32"):
        hf_effi.make_optimizer("galore_adamw", model, lr=1e-3, rank=40)
    with pytest.raises(ValueError, match="rank=128 is larger"):
        hf_effi.make_optimizer("apollo_adamw", model, lr=1e-3)  # the default rank on a tiny model


def test_target_modules_that_match_nothing_are_refused():
    with pytest.raises(ValueError, match="matched no trainable nn.Linear"):
        hf_effi.make_optimizer("galore_adamw", tiny_model("llama"), lr=1e-3, rank=4, target_modules=["nope_proj"])


def test_non_matrix_targets_are_refused():
    model = tiny_model("llama", vocab_size=VOCAB)
    with pytest.raises(ValueError, match="matched no trainable nn.Linear"):  # a regex naming only norm modules
        hf_effi.make_optimizer("galore_adamw", model, lr=1e-3, rank=4, target_modules=r".*norm")
    norm = model.model.norm.weight
    with pytest.raises(ValueError, match=r"has shape \(64,\), but only 2-D matrices can be projected"):
        GaLoreAdamW([{"params": [norm], "param_names": ["model.norm.weight"], "effi_role": "target"}], lr=1e-3)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("galore_adamw", dict(rank=4, proj="qr"), r"proj='qr' is not supported; choose one of \['randomized', 'svd'\]"),
        ("galore_adamw", dict(rank=0), "rank must be an int >= 1"),
        ("galore_adamw", dict(rank=4, update_proj_gap=0), "update_proj_gap must be an int >= 1"),
        ("galore_adamw", dict(rank=4, scale=-1.0), "scale must be a number > 0"),
        ("apollo_adamw", dict(rank=4, scale_type="row"), "scale_type='row' is not supported"),
        ("fira_adamw", dict(rank=4, norm_growth_limit=0.5), "norm_growth_limit must be a number > 1"),
        ("frugal", dict(density=1.5), r"density must be a number > 0.0 and <= 1"),
        ("gwt_adamw", dict(levels=7), r"levels=7 needs the long side .* divisible by 2\*\*7 = 128; pass levels<=6"),
        ("galore_adamw", dict(ranks=4), "unknown argument 'ranks' \\(did you mean 'rank'\\?\\)"),
        ("apollo_mini", dict(rank=4), "unknown argument 'rank'"),
    ],
)
def test_bad_settings_get_clear_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hf_effi.make_optimizer(name, tiny_model("llama", vocab_size=VOCAB), lr=1e-3, **kwargs)


def test_galore_8bit_without_bitsandbytes_or_cuda_says_what_to_use():
    with pytest.raises(ValueError, match="galore_adamw_8bit is not available.*Use 'galore_adamw'"):
        hf_effi.make_optimizer("galore_adamw_8bit", tiny_model("llama"), lr=1e-3)


def test_layerwise_under_two_processes_is_refused(monkeypatch):
    from hf_effi.optim import backward_step

    monkeypatch.setattr(backward_step.torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(backward_step.torch.distributed, "get_world_size", lambda: 2)
    with pytest.raises(RuntimeError, match="world_size=2.*layerwise=False"):
        hf_effi.make_optimizer("galore_adamw", tiny_model("llama"), lr=1e-3, rank=4, layerwise=True)


@pytest.mark.parametrize("name", ["galore_adamw", "apollo_mini"])
def test_layerwise_accumulation_and_per_parameter_clipping_match_whole_model(name):
    # Layer-wise: updates on the 2nd micro-batch of each window, each gradient clipped to its own L2 norm first.
    # Whole-model reference: the same accumulated gradients clipped per parameter by torch's rule, then step().
    clip = 0.05
    whole_model, lw_model = tiny_model("llama", vocab_size=VOCAB), tiny_model("llama", vocab_size=VOCAB)
    kwargs = dict(lr=1e-2, weight_decay=0.1, **KWARGS[name])
    whole = hf_effi.make_optimizer(name, whole_model, **kwargs)
    layerwise = hf_effi.make_optimizer(
        name, lw_model, layerwise=True, gradient_accumulation_steps=2, max_grad_norm_per_param=clip, **kwargs
    )
    data = batches(8, seed=8)
    for window in range(4):
        for ids in data[2 * window : 2 * window + 2]:
            (whole_model(input_ids=ids, labels=ids).loss / 2).backward()
            (lw_model(input_ids=ids, labels=ids).loss / 2).backward()
        for p in whole_model.parameters():
            norm = torch.linalg.vector_norm(p.grad, dtype=torch.float32)
            p.grad.mul_(torch.clamp(clip / (norm + 1e-6), max=1.0))
        whole.step()
        layerwise.step()
        whole.zero_grad(set_to_none=True)
        layerwise.zero_grad()
    for (n, p), q in zip(whole_model.named_parameters(), lw_model.parameters()):
        assert torch.equal(p, q), f"{name}: {n} differs"
    layerwise.remove_hooks()
