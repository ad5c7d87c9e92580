"""Feature maps: shapes, the identities they are built on, initialisation, dtype, and the registry's errors."""

from __future__ import annotations

import pytest
import torch

from hf_effi.linear.feature_maps import (
    FEATURE_MAPS,
    EluFeatureMap,
    HedgehogFeatureMap,
    ReluFeatureMap,
    SoftmaxFeatureMap,
    TaylorFeatureMap,
    make_feature_map,
)

B, H, T, D = 2, 3, 5, 8


def test_hedgehog_is_two_softmaxes_of_an_identity_projection_at_init():
    fmap = HedgehogFeatureMap(H, D, feature_dim=6)
    assert fmap.weight.shape == (H, D, 6) and fmap.output_dim == 12
    assert torch.equal(fmap.weight[1], torch.eye(D, 6))
    x = torch.randn(B, H, T, D)
    phi = fmap(x)
    assert phi.shape == (B, H, T, 12)
    torch.testing.assert_close(phi[..., :6], torch.softmax(x[..., :6], -1))
    torch.testing.assert_close(phi[..., 6:], torch.softmax(-x[..., :6], -1))


def test_hedgehog_weights_are_per_head():
    fmap = HedgehogFeatureMap(H, D, feature_dim=4)
    x = torch.randn(B, H, T, D)
    before = fmap(x)
    with torch.no_grad():
        fmap.weight[0].mul_(3.0)
    after = fmap(x)
    assert not torch.allclose(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, 1:], after[:, 1:])


def test_taylor_kernel_is_the_second_order_expansion_of_exp():
    fmap = TaylorFeatureMap(H, D, feature_dim=4)
    assert fmap.output_dim == 1 + 4 + 10
    with torch.no_grad():
        fmap.weight.normal_()
    q, k = torch.randn(B, H, T, D, dtype=torch.float64), torch.randn(B, H, T, D, dtype=torch.float64)
    fmap = fmap.double()
    dots = (fmap(q) * fmap(k)).sum(-1)
    pq = torch.einsum("bhtd,hdf->bhtf", q, fmap.weight)
    pk = torch.einsum("bhtd,hdf->bhtf", k, fmap.weight)
    s = (pq * pk).sum(-1) / 4 ** 0.5
    torch.testing.assert_close(dots, 1 + s + s ** 2 / 2)


def test_taylor_default_feature_dim_is_based_16():
    assert make_feature_map("taylor", H, 64).output_dim == 153


@pytest.mark.parametrize("cls, check", [
    (EluFeatureMap, lambda x, y: torch.allclose(y, torch.nn.functional.elu(x) + 1) and bool((y > 0).all())),
    (ReluFeatureMap, lambda x, y: torch.equal(y, x.clamp_min(0))),
    (SoftmaxFeatureMap, lambda x, y: torch.allclose(y.sum(-1), torch.ones(()))),
], ids=["elu", "relu", "softmax"])
def test_parameter_free_maps(cls, check):
    fmap = cls(H, D)
    x = torch.randn(B, H, T, D)
    assert fmap.output_dim == D and not list(fmap.parameters())
    assert check(x, fmap(x))


@pytest.mark.parametrize("name", ["hedgehog", "taylor", "elu", "relu", "softmax"])
def test_output_keeps_input_dtype(name):
    fmap = make_feature_map(name, H, D, feature_dim=None).to(torch.bfloat16)
    y = fmap(torch.randn(B, H, T, D, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape[-1] == fmap.output_dim and torch.isfinite(y.float()).all()


def test_unknown_feature_map_names_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'hedgehog'.*Valid feature maps"):
        make_feature_map("hedgehod", H, D)
    assert set(FEATURE_MAPS) == {"hedgehog", "taylor", "elu", "relu", "softmax"}
