"""SVFit maths: SVD init, only the top-r singular values train, W' = U diag(s) V^T + W_e, merge."""

from __future__ import annotations

import torch
from torch import nn

from hf_effi.peft.svfit import SVFitConfig, SVFitLinear, top_singular


def test_top_singular_reconstructs_and_is_deterministic():
    w = torch.randn(10, 7, generator=torch.Generator().manual_seed(0))
    U, S, V = top_singular(w, 7)
    torch.testing.assert_close(U @ torch.diag(S) @ V.T, w, rtol=1e-5, atol=1e-5)
    assert torch.all(S[:-1] >= S[1:])
    U2, S2, V2 = top_singular(w.clone(), 7)
    assert torch.equal(U, U2) and torch.equal(V, V2)
    assert torch.all(U.gather(0, U.abs().argmax(0, keepdim=True)) > 0)  # sign convention
    Ur, Sr, Vr = top_singular(w, 3)
    torch.testing.assert_close(Ur, U[:, :3]) and torch.testing.assert_close(Sr, S[:3])


def test_weight_is_scaled_top_r_plus_residual():
    base = nn.Linear(9, 11)
    w0 = base.weight.detach().clone()
    layer = SVFitLinear(base, "default", SVFitConfig(r=3, init_weights=False))
    U, S, V = top_singular(w0, 3)
    s = layer.svfit_s["default"]
    residual = w0 - U @ torch.diag(S) @ V.T
    adapted = U @ torch.diag(s.detach()) @ V.T + residual  # the paper's W' = U_r diag(s) V_r^T + W_e
    torch.testing.assert_close(w0 + layer.get_delta_weight("default").detach(), adapted, rtol=1e-5, atol=1e-5)
    x = torch.randn(5, 9)
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out, x @ adapted.T + base.bias, rtol=1e-5, atol=1e-5)
        layer.merge()
        torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-5)
        layer.unmerge()
        torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-6)


def test_only_r_values_train_and_init_is_identity():
    layer = SVFitLinear(nn.Linear(8, 8), "default", SVFitConfig(r=2))
    names = [n for n, _ in layer.named_parameters() if not n.startswith("base_layer.")]  # the tuner freezes base
    assert names == ["svfit_s.default"] and layer.svfit_s["default"].numel() == 2
    torch.testing.assert_close(layer.svfit_s["default"].detach(), layer.svfit_sigma["default"])
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), layer.base_layer(x))
    layer(x).pow(2).sum().backward()
    assert layer.svfit_s["default"].grad.abs().sum() > 0
    assert set(dict(layer.named_buffers())) == {"svfit_U.default", "svfit_V.default", "svfit_sigma.default"}
