"""Orthonormal Haar wavelet transform along the last dimension (the projector of GWT).

Wen et al., "Breaking Memory Limits: Gradient Wavelet Transform Enhances LLMs Training" (v3: "Wavelet Meets
Adam"), arXiv 2501.07237, Sec. 3: one level maps pairs ``(x0, x1)`` to the approximation ``(x0 + x1)/√2`` and the
detail ``(x0 - x1)/√2``; ``levels`` levels repeat it on the approximation. The transform is orthonormal, so the
inverse is its transpose and reconstruction is exact up to rounding.
"""

from __future__ import annotations

import math

import torch

__all__ = ["haar_forward", "haar_inverse"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def haar_forward(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``x`` (``[..., n]``, ``n`` divisible by ``2**levels``) -> ``(approx [..., n / 2**levels], details)``.

    ``details[k]`` is level ``k + 1``'s detail, ``[..., n / 2**(k + 1)]`` (finest first).
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an int >= 1, got {levels!r}")
    n = x.shape[-1]
    if n % (2**levels):
        raise ValueError(
            f"haar_forward needs the last dimension ({n}) divisible by 2**levels = {2**levels}; use fewer levels"
        )
    details = []
    for _ in range(levels):
        even, odd = x[..., 0::2], x[..., 1::2]
        details.append((even - odd) * _INV_SQRT2)
        x = (even + odd) * _INV_SQRT2
    return x, details


def haar_inverse(approx: torch.Tensor, details: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`haar_forward`: ``(approx, details)`` -> ``[..., n]``."""
    x = approx
    for d in reversed(details):
        if d.shape != x.shape:
            raise ValueError(f"detail of shape {tuple(d.shape)} does not match approximation {tuple(x.shape)}")
        even, odd = (x + d) * _INV_SQRT2, (x - d) * _INV_SQRT2
        x = torch.stack((even, odd), dim=-1).flatten(-2)
    return x
