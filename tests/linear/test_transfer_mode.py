"""Attention-transfer mode: per-layer MSE against the layer's own softmax output, teacher forcing, gradients only
into the new parameters, and a few optimizer steps lowering every layer's MSE."""

from __future__ import annotations

import pytest
import torch

import hf_effi.linear as lin
from hf_effi.testing import tiny_model

T = 16


def _ids(batch=2, length=T, seed=2):
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_mse_is_zero_when_the_window_covers_the_sequence():
    model = lin.linearize(tiny_model("llama").eval(), "lolcats", window=T)
    lin.set_attention_transfer(model, True)
    model(_ids(), use_cache=False)
    losses = lin.transfer_losses(model)
    assert sorted(losses) == [0, 1]
    assert all(loss.item() < 1e-10 for loss in losses.values())


@pytest.mark.parametrize("method", ["lolcats", "liger"])
def test_teacher_forcing_passes_the_softmax_output_on(method):
    model = tiny_model("mistral").eval()
    ids = _ids()
    expected = model(ids).logits
    lin.linearize(model, method, window=4)
    assert (model(ids).logits - expected).abs().max() > 1e-3
    lin.set_attention_transfer(model, True)
    torch.testing.assert_close(model(ids, use_cache=False).logits, expected, atol=2e-5, rtol=1e-5)
    assert all(loss.item() > 0 for loss in lin.transfer_losses(model).values())
    lin.set_attention_transfer(model, False)
    assert (model(ids).logits - expected).abs().max() > 1e-3


def test_padding_is_left_out_of_the_mse():
    model = lin.linearize(tiny_model("llama").eval(), "lolcats", window=T)
    lin.set_attention_transfer(model, True)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    model(_ids(), attention_mask=mask, use_cache=False)
    assert all(loss.item() < 1e-10 for loss in lin.transfer_losses(model).values())


def test_gradients_reach_only_the_new_parameters():
    model = lin.linearize(tiny_model("llama"), "lolcats", window=4)
    lin.set_attention_transfer(model, True)
    model(_ids(), use_cache=False)
    sum(lin.transfer_losses(model).values()).backward()
    new = {id(p) for p in lin.linear_parameters(model)}
    for name, param in model.named_parameters():
        if id(param) in new:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_a_few_steps_lower_every_layers_mse():
    model = lin.linearize(tiny_model("qwen2"), "lolcats", window=4)
    model.requires_grad_(False)
    params = lin.linear_parameters(model)
    for p in params:
        p.requires_grad_(True)
    lin.set_attention_transfer(model, True)
    optimizer = torch.optim.Adam(params, lr=2e-2)
    ids = _ids(batch=4, length=24)
    first = None
    for _ in range(12):
        model(ids, use_cache=False)
        losses = lin.transfer_losses(model)
        first = first or {i: v.item() for i, v in losses.items()}
        optimizer.zero_grad()
        (1000 * sum(losses.values())).backward()  # LoLCATs' mse_factor
        optimizer.step()
    model(ids, use_cache=False)
    last = {i: v.item() for i, v in lin.transfer_losses(model).items()}
    assert all(last[i] < 0.8 * first[i] for i in first), (first, last)


def test_transfer_mode_errors():
    plain = tiny_model("llama")
    with pytest.raises(ValueError, match="no linearized attention"):
        lin.set_attention_transfer(plain, True)
    model = lin.linearize(plain, "lolcats", window=4)
    lin.set_attention_transfer(model, True)
    with pytest.raises(ValueError, match="call set_attention_transfer"):
        lin.transfer_losses(model)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        lin.set_attention_transfer(model, 1)
    out = model(_ids(), use_cache=True)
    with pytest.raises(ValueError, match="use_cache=False"):
        model(_ids(length=1), past_key_values=out.past_key_values, use_cache=True)
