"""MoRA maths: the size rule, the compress/decompress operators on hand-computed cases, forward == merged."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hf_effi.peft.mora import MoRAConfig, MoRALinear, mora_compress, mora_decompress, mora_rank


def test_rank_matches_lora_parameter_count():
    # LoRA r=8 on 4096x4096 has 65,536 params; r_hat = floor(sqrt(8192 * 8) + 0.5) = 256 -> 65,536
    assert mora_rank(4096, 4096, 8, 1) == 256
    assert mora_rank(64, 32, 4, 1) == 20 and mora_rank(64, 32, 4, 6) == 20  # sqrt(384)=19.6 -> 20
    assert mora_rank(64, 64, 4, 1) == 23 and mora_rank(64, 64, 4, 6) == 22  # type 6 is made even
    for d_in, d_out, r in [(576, 576, 8), (576, 1536, 16), (960, 192, 4)]:
        r_hat = mora_rank(d_in, d_out, r, 1)
        assert abs(r_hat**2 - r * (d_in + d_out)) <= r_hat  # within rounding of LoRA's count


def test_type1_sharing_by_hand():
    x = torch.arange(1.0, 8.0)  # 7 features, r_hat = 3 -> chunks [1,2,3] [4,5,6] [7,0,0]
    assert torch.equal(mora_compress(x, 3, 1), torch.tensor([12.0, 7.0, 9.0]))
    assert torch.equal(mora_decompress(torch.tensor([1.0, 2.0, 3.0]), 7, 1), torch.tensor([1.0, 2, 3, 1, 2, 3, 1]))


def test_type6_rope_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])  # r_hat = 4 -> 2 chunks
    out = mora_compress(x, 4, 6, rope_base=10000.0)
    assert out.shape == (2, 4)
    assert torch.allclose(out[0], x[:4])  # chunk 0: angle 0, no rotation
    # chunk 1: pairs (0, 2) rotate by 1 rad, pairs (1, 3) by 10000**(-1/2) = 0.01 rad
    a, b = 1.0, 0.01
    c = x[4:]
    expected = torch.tensor(
        [
            c[0] * math.cos(a) - c[2] * math.sin(a),
            c[1] * math.cos(b) - c[3] * math.sin(b),
            c[2] * math.cos(a) + c[0] * math.sin(a),
            c[3] * math.cos(b) + c[1] * math.sin(b),
        ]
    )
    torch.testing.assert_close(out[1], expected)
    assert torch.equal(mora_decompress(torch.arange(8.0).reshape(2, 4), 6, 6), torch.arange(6.0))
    assert torch.equal(mora_decompress(torch.arange(4.0).reshape(1, 4), 6, 6), torch.tensor([0.0, 1, 2, 3, 0, 1]))


@pytest.mark.parametrize("mora_type", [1, 6])
@pytest.mark.parametrize("shape", [(64, 64), (48, 20), (20, 48)])
def test_forward_equals_merged_and_explicit(mora_type, shape):
    d_in, d_out = shape
    layer = MoRALinear(nn.Linear(d_in, d_out), "default", MoRAConfig(r=2, mora_type=mora_type, init_weights=False))
    x = torch.randn(3, 5, d_in)
    M = layer.mora_M["default"]
    r_hat = M.shape[0]
    # explicit, loop-based reference of the operators
    n = -(-d_in // r_hat)
    padded = torch.cat([x, x.new_zeros(3, 5, n * r_hat - d_in)], dim=-1).reshape(3, 5, n, r_hat)
    if mora_type == 1:
        h = padded.sum(-2) @ M.T
        flat = h
    else:
        blocks = []
        for i in range(n):
            inv = 10000.0 ** (-torch.arange(0, r_hat, 2, dtype=torch.float64) / r_hat)
            ang = torch.cat([i * inv, i * inv]).float()
            chunk = padded[..., i, :]
            rot = torch.cat([-chunk[..., r_hat // 2 :], chunk[..., : r_hat // 2]], -1)
            blocks.append((chunk * ang.cos() + rot * ang.sin()) @ M.T)
        flat = torch.cat(blocks, -1)
    expected_delta = torch.cat([flat] * (-(-d_out // flat.shape[-1])), -1)[..., :d_out]
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out - layer.base_layer(x), expected_delta, rtol=1e-5, atol=1e-5)
        layer.merge()
        torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-5)
        layer.unmerge()
        torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-5)


def test_zero_init_is_identity_and_trains():
    base = nn.Linear(32, 32)
    layer = MoRALinear(base, "default", MoRAConfig(r=4))
    x = torch.randn(4, 32)
    torch.testing.assert_close(layer(x), base(x))
    layer(x).pow(2).sum().backward()
    assert layer.mora_M["default"].grad.abs().sum() > 0  # M=0 still receives gradient (operators are fixed)
