"""SLTrain: the random fixed support, the sparse-plus-low-rank weight against a hand computation, gradients only on
the support, the from-scratch model (parameter count, stored bytes, training, state-dict round trip, densify), and
bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import get_peft_model
from peft.config import PeftConfig
from torch import nn
from transformers import LlamaConfig

from hf_effi.peft.sltrain import (
    SLTrainConfig,
    SLTrainLayer,
    SLTrainLinear,
    SparseLowRankLinear,
    densify_sltrain,
    random_support,
    sltrain_model,
)
from hf_effi.testing import tiny_model


def test_support_is_seeded_sorted_and_of_the_right_size():
    idx = random_support(13, 11, 0.1, seed=3)
    assert idx.dtype == torch.int32 and idx.numel() == int(0.1 * 143)
    assert torch.equal(idx, random_support(13, 11, 0.1, seed=3))
    assert not torch.equal(idx, random_support(13, 11, 0.1, seed=4))
    assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == idx.numel()
    assert int(idx.min()) >= 0 and int(idx.max()) < 143


def test_delta_matches_hand_computation_and_grad_is_on_support():
    base = nn.Linear(9, 6)
    layer = SLTrainLinear(base, "default", r=2, lora_alpha=4.0, density=0.2, seed=0, init_weights=False)
    a, b, v = layer.sltrain_A["default"], layer.sltrain_B["default"], layer.sltrain_values["default"]
    idx = layer.sltrain_indices["default"]
    sparse = torch.zeros(6, 9)
    for k, flat in enumerate(idx.tolist()):
        sparse[flat // 9, flat % 9] = v[k]
    delta = 2.0 * b @ a + sparse
    torch.testing.assert_close(layer.get_delta_weight("default"), delta)
    x = torch.randn(3, 9)
    y = layer(x)
    torch.testing.assert_close(y, x @ (base.weight + delta).T + base.bias)
    (y ** 2).sum().backward()
    w = (base.weight + delta).detach().requires_grad_(True)
    ((x @ w.T + base.bias) ** 2).sum().backward()
    torch.testing.assert_close(v.grad, w.grad.flatten()[idx.long()])


def test_adapter_starts_at_base_and_saves_indices_and_values():
    model = get_peft_model(tiny_model("llama"), SLTrainConfig(r=4, density=0.05))
    layer = next(m for m in model.modules() if isinstance(m, SLTrainLayer))
    assert torch.count_nonzero(layer.get_delta_weight("default")) == 0
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    keys = {k.rsplit(".", 1)[-1] for k in state}
    assert keys == {"sltrain_A", "sltrain_B", "sltrain_values", "sltrain_indices"}
    assert all(v.dtype == torch.int32 for k, v in state.items() if k.endswith("sltrain_indices"))
    supports = [v for k, v in state.items() if k.endswith("sltrain_indices")]
    assert not torch.equal(supports[0], supports[1])  # every layer draws its own support


def _config():
    return LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False)


def test_sltrain_model_counts_and_bytes():
    r, density = 8, 0.03
    model = sltrain_model(_config(), SLTrainConfig(r=r, density=density))
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (96, 64), (96, 64), (64, 96)]  # q k v o gate up down
    layers = [m for m in model.modules() if isinstance(m, SparseLowRankLinear)]
    assert len(layers) == 2 * len(shapes)
    assert not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.startswith("model.layers"))
    nnz = 2 * sum(int(density * o * i) for o, i in shapes)
    lowrank = 2 * sum(r * (o + i) for o, i in shapes)
    dense_rest = 128 * 64 * 2 + 64 * (2 * 2 + 1)  # embeddings, lm_head, norms
    assert sum(p.numel() for p in model.parameters()) == lowrank + nnz + dense_rest
    assert sum(m.sparse_indices.numel() for m in layers) == nnz
    stored = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert stored == 4 * (lowrank + nnz + dense_rest) + 4 * nnz  # fp32 values, int32 indices


def test_sltrain_model_trains_and_round_trips():
    config = _config()
    model = sltrain_model(config, SLTrainConfig(r=8, density=0.05), seed=0)
    ids = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
    other = sltrain_model(config, SLTrainConfig(r=8, density=0.05), seed=1).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(ids).logits, expected)
    dense = densify_sltrain(other)
    assert not any(isinstance(m, SparseLowRankLinear) for m in dense.modules())
    with torch.no_grad():
        torch.testing.assert_close(dense(ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_sltrain_model_bad_input():
    with pytest.raises(ValueError, match="r=65 exceeds"):
        sltrain_model(_config(), SLTrainConfig(r=65))
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        sltrain_model(_config(), SLTrainConfig(r=4, target_modules=["nope"]))
    with pytest.raises(TypeError, match="only nn.Linear"):
        sltrain_model(_config(), SLTrainConfig(r=4, target_modules=["embed_tokens"]))
    with pytest.raises(TypeError, match="PretrainedConfig"):
        sltrain_model({"model_type": "llama"})
    with pytest.raises(ValueError, match="no SLTrain layer"):
        densify_sltrain(tiny_model("llama"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(r=65, target_modules=["q_proj", "v_proj"]), ValueError, "r=65 exceeds"),
    (dict(r=2, target_modules=["q_proj", "embed_tokens"]), TypeError, "only nn.Linear"),
], ids=["rank-too-large", "embedding"])
def test_bad_targets_leave_model_unchanged(kwargs, error, match):
    model = tiny_model("llama")
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(error, match=match):
        get_peft_model(model, SLTrainConfig(**kwargs))
    assert [n for n, _ in model.named_modules()] == names


@pytest.mark.parametrize("kwargs, match", [(dict(density=0.0), "density"), (dict(density=1.0), "density"),
                                           (dict(r=-1), "r=-1")])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SLTrainConfig(**kwargs)


def test_config_docstring_lists_every_field():
    own = {f.name for f in dataclasses.fields(SLTrainConfig)} - {f.name for f in dataclasses.fields(PeftConfig)}
    assert all("help" in SLTrainConfig.__dataclass_fields__[name].metadata for name in own)
    assert not [name for name in own - {"target_parameters"} if f"{name}:" not in SLTrainConfig.__doc__]
