"""Feature maps phi for linear attention: softmax(q k^T) is replaced by phi(q) phi(k)^T.

Every map takes ``x`` of shape ``[B, H, T, D]`` (one head dimension per query head, after repeating KV heads) and
returns ``[B, H, T, F]`` with F = ``map.output_dim``. Maps with weights keep one matrix per head, so a converted
layer adds ``2 * H * D * feature_dim`` parameters (untied maps for q and k, as in LoLCATs' ``tie_qk_kernels: false``).

Registered by name in ``FEATURE_MAPS`` (``hedgehog``, ``taylor``, ``elu``, ``relu``, ``softmax``); each factory is
``factory(num_heads, head_dim, feature_dim=None)``.
"""

from __future__ import annotations

import torch
from torch import nn

from hf_effi.registry import Registry

__all__ = ["FEATURE_MAPS", "EluFeatureMap", "HedgehogFeatureMap", "ReluFeatureMap", "SoftmaxFeatureMap",
           "TaylorFeatureMap", "make_feature_map"]

FEATURE_MAPS = Registry("feature map", family="feature_maps")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 upcast to float32 for the softmax/products; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _per_head_identity(num_heads: int, head_dim: int, feature_dim: int) -> torch.Tensor:
    """``[H, D, F]`` holding ``eye(D, F)`` per head: the map starts as a (truncated) identity projection."""
    return torch.eye(head_dim, feature_dim).unsqueeze(0).repeat(num_heads, 1, 1)


class HedgehogFeatureMap(nn.Module):
    """Hedgehog map, LoLCATs variant: phi(x) = [softmax(x W_h) ⊕ softmax(-x W_h)], softmax over the features.

    "The Hedgehog & the Porcupine" (Zhang et al., arXiv:2402.04347) and LoLCATs (arXiv:2410.10254, its
    ``softmax_dim`` map with ``learned_kernel: untied_head_einsum``). Two separate softmaxes, as LoLCATs, not fla's
    single softmax over the concatenation; the two are not interchangeable. W_h is ``[D, F]`` per head, no bias,
    initialised to ``eye(D, F)`` (LoLCATs' ``--lk_zero_init``). Output ``[B, H, T, 2F]``; the softmax runs in
    (at least) float32 and the result is cast back to ``x``'s dtype.
    """

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int = 64):
        super().__init__()
        self.weight = nn.Parameter(_per_head_identity(num_heads, head_dim, feature_dim))
        self.output_dim = 2 * feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = _at_least_fp32(torch.einsum("bhtd,hdf->bhtf", x, self.weight.to(x.dtype)))
        phi = torch.cat([torch.softmax(projected, dim=-1), torch.softmax(-projected, dim=-1)], dim=-1)
        return phi.to(x.dtype)


class TaylorFeatureMap(nn.Module):
    """Second-order Taylor map of Based ("Simple linear attention language models balance the recall-throughput
    tradeoff", Arora et al., arXiv:2402.18668): phi(q)·phi(k) = 1 + q·k/√F + (q·k)²/(2F) ≈ exp(q·k/√F).

    x is first projected per head to ``feature_dim`` F (Based uses 16) by a learnable ``[D, F]`` matrix, initialised
    to ``eye(D, F)``; the quadratic term keeps the upper triangle of x xᵀ (off-diagonal entries counted once, the
    diagonal divided by √2), so F_out = 1 + F + F(F+1)/2 (153 for F=16) instead of 1 + F + F².
    """

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int = 16):
        super().__init__()
        self.weight = nn.Parameter(_per_head_identity(num_heads, head_dim, feature_dim))
        self.feature_dim = feature_dim
        self.output_dim = 1 + feature_dim + feature_dim * (feature_dim + 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = _at_least_fp32(torch.einsum("bhtd,hdf->bhtf", x, self.weight.to(x.dtype))) * self.feature_dim ** -0.25
        # built per call, not kept as buffers: from_pretrained materialises modules from the meta device and
        # would leave non-persistent buffers uninitialised
        rows, cols = torch.triu_indices(self.feature_dim, self.feature_dim, device=z.device)
        quadratic = z[..., rows] * z[..., cols]
        quadratic = torch.where(rows == cols, quadratic * 2 ** -0.5, quadratic)
        return torch.cat([torch.ones_like(z[..., :1]), z, quadratic], dim=-1).to(x.dtype)


class EluFeatureMap(nn.Module):
    """phi(x) = elu(x) + 1 ("Transformers are RNNs", Katharopoulos et al., arXiv:2006.16236); no parameters."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int | None = None):
        super().__init__()
        self.output_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.elu(x) + 1


class ReluFeatureMap(nn.Module):
    """phi(x) = relu(x); no parameters. An ablation baseline: a row of phi(q) can be all zero, and the linear
    attention normaliser's ``eps`` then makes that token's output zero."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int | None = None):
        super().__init__()
        self.output_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu(x)


class SoftmaxFeatureMap(nn.Module):
    """phi(x) = softmax(x) over the head dimension, no parameters: the map Liger ("Linearizing Large Language
    Models to Gated Recurrent Structures", Lan et al., arXiv:2503.01496) applies to the pre-RoPE q and k."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int | None = None):
        super().__init__()
        self.output_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_at_least_fp32(x), dim=-1).to(x.dtype)


FEATURE_MAPS.register("hedgehog", HedgehogFeatureMap, "learnable [softmax(xW) ⊕ softmax(-xW)] per head (LoLCATs)",
                      default_feature_dim=64, learnable=True)
FEATURE_MAPS.register("taylor", TaylorFeatureMap, "2nd-order Taylor of exp on a learnable projection (Based)",
                      default_feature_dim=16, learnable=True)
FEATURE_MAPS.register("elu", EluFeatureMap, "elu(x) + 1, no parameters (ablation)", default_feature_dim=None,
                      learnable=False)
FEATURE_MAPS.register("relu", ReluFeatureMap, "relu(x), no parameters (ablation)", default_feature_dim=None,
                      learnable=False)
FEATURE_MAPS.register("softmax", SoftmaxFeatureMap, "softmax over the head dimension, no parameters (Liger)",
                      default_feature_dim=None, learnable=False)


def make_feature_map(name: str, num_heads: int, head_dim: int, feature_dim: int | None = None) -> nn.Module:
    """The registered map ``name`` for ``num_heads`` heads of size ``head_dim``; ``feature_dim`` None takes the
    map's default (ignored by maps without weights)."""
    entry = FEATURE_MAPS.get(name)
    default = entry.meta["default_feature_dim"]
    if not entry.meta["learnable"]:
        return entry.factory(num_heads, head_dim)
    return entry.factory(num_heads, head_dim, default if feature_dim is None else feature_dim)

