"""PMSS maths: skeleton selection by hand, delta = C U R, only U trains, merge."""

from __future__ import annotations

import torch
from torch import nn

from hf_effi.peft.pmss import PMSSConfig, PMSSLinear, select_skeleton


def test_select_skeleton_by_hand():
    w = torch.tensor([[1.0, 0.0, 5.0], [0.0, 0.0, 0.0], [3.0, 0.1, 0.0], [0.0, 2.0, 0.0]])
    cols, rows = select_skeleton(w, 2)
    assert cols.tolist() == [0, 2]  # column norms 3.16, 2.0, 5.0
    assert rows.tolist() == [0, 2]  # row norms 5.10, 0, 3.0, 2.0
    tie = torch.ones(3, 3)
    assert [t.tolist() for t in select_skeleton(tie, 2)] == [[0, 1], [0, 1]]  # ties -> lower index


def test_delta_is_c_u_r_of_the_pretrained_weight():
    base = nn.Linear(12, 10)
    layer = PMSSLinear(base, "default", PMSSConfig(r=3, scaling=0.5, init_weights=False))
    cols, rows = select_skeleton(base.weight, 3)
    C, R, U = base.weight[:, cols], base.weight[rows, :], layer.pmss_U["default"]
    torch.testing.assert_close(layer.pmss_C["default"], C.detach())
    torch.testing.assert_close(layer.pmss_R["default"], R.detach())
    expected = 0.5 * C @ U @ R
    torch.testing.assert_close(layer.get_delta_weight("default"), expected)
    x = torch.randn(4, 12)
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out, base(x) + x @ expected.T, rtol=1e-5, atol=1e-6)
        w0 = base.weight.clone()
        layer.merge()
        torch.testing.assert_close(base.weight, w0 + expected)
        torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-6)
        layer.unmerge()
        torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-6)
    # C and R are kept, not re-read, so a merged base does not change them
    torch.testing.assert_close(layer.pmss_C["default"], C.detach())


def test_only_core_trains_and_params_are_r_squared():
    layer = PMSSLinear(nn.Linear(16, 16), "default", PMSSConfig(r=4))
    names = [n for n, _ in layer.named_parameters() if not n.startswith("base_layer.")]  # the tuner freezes base
    assert names == ["pmss_U.default"] and layer.pmss_U["default"].numel() == 16
    x = torch.randn(2, 16)
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # U = 0 at init
    layer(x).sum().backward()
    assert layer.pmss_U["default"].grad.abs().sum() > 0
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {"pmss_C.default", "pmss_R.default"}  # saved with the adapter
