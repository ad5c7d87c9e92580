"""Projector core shared by the subspace optimizers: bases, seeded random projections and row selections.

Every function works on a gradient ``g`` already oriented with its short side first (``[s, l]``, ``s <= l``,
see :func:`oriented`), so a rank-``r`` subspace is always ``r`` of the ``s`` rows' directions and the optimizer
state (``r x l``) is as small as it can be. Nothing here touches torch's global RNG: every random draw comes from
a ``torch.Generator`` seeded by :func:`stable_seed` from the parameter's name and refresh count, so DDP ranks and
layer-wise inner optimizers (which see one parameter each) draw the same projection.

- :func:`exact_svd_basis` — top-``r`` left singular vectors (GaLore, Zhao et al., arXiv 2403.03507, Alg. 2).
- :func:`randomized_range_finder` — the same subspace from Halko, Martinsson & Tropp, "Finding structure with
  randomness", arXiv 0909.4061, Alg. 4.4 (randomized subspace iteration) + Alg. 5.1 (SVD of the small matrix).
- :func:`gaussian_projection` — ``N(0, 1/r)`` random projection regenerated from its seed (APOLLO, Zhu et al.,
  arXiv 2412.05270, Sec. 4.1).
- :func:`top_norm_rows` — the ``r`` rows of largest norm (Grass, Muhamed et al., arXiv 2406.17660, "Top-r").
- :func:`random_rows` — ``r`` rows drawn uniformly without replacement (FRUGAL, Zmushko et al., arXiv 2411.07837,
  coordinate/column projection).
"""

from __future__ import annotations

import hashlib
import math

import torch

__all__ = [
    "exact_svd_basis",
    "gaussian_projection",
    "oriented",
    "random_rows",
    "randomized_range_finder",
    "refresh_offset",
    "stable_seed",
    "top_norm_rows",
]


def oriented(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (``[m, n]``) as a view with its short side first: itself if ``m <= n``, else ``matrix.t()``."""
    return matrix if matrix.shape[0] <= matrix.shape[1] else matrix.t()


def _digest(text: str) -> int:
    # blake2b, not hash(): Python salts str hashes per process, and ranks must agree.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def stable_seed(name: str, refresh: int, base_seed: int = 0) -> int:
    """A 63-bit seed that depends only on the parameter name, the refresh count and ``base_seed``."""
    return _digest(f"{base_seed}:{name}:{refresh}") & (2**63 - 1)


def refresh_offset(name: str, update_proj_gap: int) -> int:
    """Deterministic stagger in ``[0, update_proj_gap)`` so matrices refresh on different steps."""
    return _digest(f"offset:{name}") % update_proj_gap


def exact_svd_basis(g: torch.Tensor, rank: int) -> torch.Tensor:
    """``[s, r]`` orthonormal basis of the top-``rank`` left singular vectors of ``g`` (``[s, l]``, fp32 SVD)."""
    u, _, _ = torch.linalg.svd(g.float(), full_matrices=False)
    return u[:, :rank].contiguous()


def randomized_range_finder(
    g: torch.Tensor,
    rank: int,
    *,
    generator: torch.Generator,
    power_iterations: int = 2,
    oversample: int = 8,
) -> torch.Tensor:
    """``[s, r]`` orthonormal approximation of the top-``rank`` left singular subspace of ``g`` (``[s, l]``).

    Halko et al. (arXiv 0909.4061): sketch ``Y = g Ω`` with ``k = rank + oversample`` Gaussian columns
    (Alg. 4.1), re-orthonormalised power iterations ``Y = g (gᵀ Q)`` (Alg. 4.4), then the SVD of the small
    ``[k, l]`` matrix ``Qᵀ g`` rotates ``Q`` onto the top singular directions (Alg. 5.1), which are kept.
    ``Ω`` is drawn on the CPU from ``generator`` and moved to ``g``'s device, so every device draws the same.
    """
    g = g.float()
    s, l_dim = g.shape
    k = min(rank + oversample, s)
    omega = torch.randn(l_dim, k, generator=generator).to(g.device)
    q, _ = torch.linalg.qr(g @ omega)  # Alg. 4.1
    for _ in range(power_iterations):  # Alg. 4.4: QR between products keeps the small singular values
        z, _ = torch.linalg.qr(g.t() @ q)
        q, _ = torch.linalg.qr(g @ z)
    u_small, _, _ = torch.linalg.svd(q.t() @ g, full_matrices=False)  # Alg. 5.1
    return (q @ u_small[:, :rank]).contiguous()


def gaussian_projection(rank: int, dim: int, seed: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[rank, dim]`` matrix with i.i.d. ``N(0, 1/rank)`` entries, a pure function of ``seed`` (APOLLO Sec. 4.1)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rank, dim, generator=gen) / math.sqrt(rank)).to(device)


def top_norm_rows(g: torch.Tensor, rank: int) -> torch.Tensor:
    """Sorted indices (``int64``, ``[rank]``) of the ``rank`` rows of ``g`` with the largest L2 norm (Grass)."""
    norms = torch.linalg.vector_norm(g.float(), dim=1)
    return torch.topk(norms, rank, sorted=False).indices.sort().values


def random_rows(dim: int, rank: int, seed: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sorted indices of ``rank`` of ``dim`` rows drawn uniformly without replacement from ``seed`` (FRUGAL)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(dim, generator=gen)[:rank].sort().values.to(device)
