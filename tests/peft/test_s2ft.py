"""S²FT: the random head/channel selection, row and column slices against a hand computation, gradients equal to
the dense weight's gradient on the selected slice, parameter counts, and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import get_peft_model
from peft.config import PeftConfig
from torch import nn

from hf_effi.peft.s2ft import S2FTConfig, S2FTLayer, S2FTLinear, select_units
from hf_effi.testing import tiny_model


def test_select_units_expands_heads_and_is_seeded():
    idx = select_units(8, 0.25, 4, "0:model.layers.0.self_attn.o_proj")
    assert idx.numel() == 2 * 4
    assert torch.equal(idx, select_units(8, 0.25, 4, "0:model.layers.0.self_attn.o_proj"))
    heads = idx.view(2, 4)
    assert torch.equal(heads - heads[:, :1], torch.arange(4).expand(2, 4)) and (heads[:, 0] % 4 == 0).all()
    assert select_units(100, 0.001, 1, "x").numel() == 1  # at least one unit


@pytest.mark.parametrize("rows", [False, True], ids=["columns", "rows"])
def test_slice_forward_and_grad_match_dense_weight(rows):
    base = nn.Linear(7, 5)
    idx = torch.tensor([1, 4]) if rows else torch.tensor([0, 3, 6])
    layer = S2FTLinear(base, "default", idx, rows, init_weights=False)
    d = layer.s2ft_delta["default"]
    w = base.weight.detach().clone()
    if rows:
        w[idx] += d.detach()
    else:
        w[:, idx] += d.detach()
    torch.testing.assert_close(layer.get_delta_weight("default"), w - base.weight)
    x = torch.randn(2, 3, 7)
    y = layer(x)
    torch.testing.assert_close(y, x @ w.T + base.bias)
    (y.sin()).sum().backward()
    w.requires_grad_(True)
    ((x @ w.T + base.bias).sin()).sum().backward()
    torch.testing.assert_close(d.grad, w.grad[idx] if rows else w.grad[:, idx])


def test_default_targets_and_parameter_count():
    model = tiny_model("llama")  # 4 heads of dim 16, intermediate 128, hidden 64, 2 layers
    peft_model = get_peft_model(model, S2FTConfig(head_ratio=0.25, channel_ratio=0.1))
    layers = {n.rsplit(".", 1)[-1]: m for n, m in peft_model.named_modules() if isinstance(m, S2FTLayer)}
    assert set(layers) == {"o_proj", "down_proj"}
    # o_proj: 1 head = 16 columns x 64 rows; down_proj: round(12.8) = 13 channels x 64 rows; 2 layers
    assert peft_model.get_nb_trainable_parameters()[0] == 2 * (16 * 64 + 13 * 64)
    assert not layers["o_proj"].s2ft_rows["default"] and layers["o_proj"].s2ft_indices["default"].numel() == 16


def test_selection_differs_between_layers_and_seeds():
    def picks(seed):
        m = get_peft_model(tiny_model("llama"), S2FTConfig(selection_seed=seed, channel_ratio=0.1,
                                                           target_modules=["down_proj"]))
        return [tuple(x.s2ft_indices["default"].tolist()) for x in m.modules() if isinstance(x, S2FTLayer)]

    first = picks(0)
    assert first[0] != first[1] and first == picks(0) and first != picks(1)


def test_bad_head_dim_leaves_model_unchanged():
    model = tiny_model("llama")
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(ValueError, match="not a multiple of head_dim=24"):
        get_peft_model(model, S2FTConfig(head_dim=24, target_modules=["down_proj", "o_proj"]))
    assert [n for n, _ in model.named_modules()] == names
    with pytest.raises(TypeError, match="only nn.Linear"):
        get_peft_model(model, S2FTConfig(target_modules=["o_proj", "embed_tokens"]))
    assert [n for n, _ in model.named_modules()] == names


@pytest.mark.parametrize("kwargs, match", [(dict(head_ratio=0.0), "head_ratio"), (dict(channel_ratio=1.5),
                                                                                   "channel_ratio"),
                                           (dict(head_dim=0), "head_dim")])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S2FTConfig(**kwargs)


def test_config_docstring_lists_every_field():
    own = {f.name for f in dataclasses.fields(S2FTConfig)} - {f.name for f in dataclasses.fields(PeftConfig)}
    assert all("help" in S2FTConfig.__dataclass_fields__[name].metadata for name in own)
    assert not [name for name in own - {"target_parameters"} if f"{name}:" not in S2FTConfig.__doc__]
