"""Spectrum (Hartford et al., "Spectrum: Targeted Training on Signal to Noise Ratio", arXiv 2406.06623): rank weight
matrices by the signal-to-noise ratio of their singular values and train only the top ones per module type.

For a weight ``W`` of shape ``[n, m]`` with singular values ``S``, a pure-noise matrix (i.i.d. entries of standard
deviation ``s``) has all its singular values below the Marchenko–Pastur bulk edge ``s * (sqrt(n) + sqrt(m))``.
Singular values above the edge are signal, the rest noise, and ``snr = sum(S above) / sum(S below)``.

Two choices differ from the reference script (cognitivecomputations/spectrum), both because its version ranks
pure noise above planted low-rank signal (checked in ``tests/trainers/test_spectrum.py``):

- Noise level: the reference takes ``IQR(S) / 1.349`` (a normal-distribution rule applied to singular values,
  which are not normal). We estimate ``s`` from the median squared singular value and the median ``mu_beta`` of the
  Marchenko–Pastur law (Gavish & Donoho, "The Optimal Hard Threshold for Singular Values is 4/sqrt(3)",
  arXiv 1305.5870): ``s^2 = median(S^2) / (max(n, m) * mu_beta)``, ``beta = min(n, m) / max(n, m)``. The threshold
  is then ``s * sqrt(max(n, m)) * (1 + sqrt(beta))``, the paper's ``sigma * (1 + sqrt(beta))`` with this sigma.
- No division by the largest singular value: that makes the SNR depend on the scale of the weights (``c * W`` would
  rank ``1/c`` as high), so small-norm matrices would win regardless of their spectrum.

The embeddings and the LM head are not scanned; Spectrum always trains them (``spectrum_freeze(..., train_embeddings)``).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SpectrumEntry", "marchenko_pastur_median", "matrix_snr", "spectrum_freeze", "spectrum_scan"]


@dataclass(frozen=True)
class SpectrumEntry:
    """One scanned matrix: module name, module type (the name without the block prefix, e.g. ``self_attn.q_proj``),
    SNR, and how many singular values lie above the Marchenko–Pastur edge."""

    name: str
    module_type: str
    snr: float
    signal_rank: int


@functools.lru_cache(maxsize=64)
def marchenko_pastur_median(beta: float, grid: int = 20001) -> float:
    """Median of the Marchenko–Pastur law of ratio ``beta`` in (0, 1] (eigenvalues of ``X X^T / m`` for an
    ``[n, m]`` matrix of unit-variance entries, ``beta = n / m``), by integrating its density on a fine grid."""
    if not 0 < beta <= 1:
        raise ValueError(f"beta={beta!r} must be in (0, 1]")
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    # x = lo + (hi - lo) * t^2 packs the grid near the lower edge, where the density diverges when beta = 1.
    t = torch.linspace(0, 1, grid, dtype=torch.float64)
    x = lo + (hi - lo) * t**2
    density = torch.sqrt(((hi - x) * (x - lo)).clamp_min(0)) / (2 * math.pi * beta * x.clamp_min(1e-300))
    cdf = torch.cumulative_trapezoid(density * 2 * (hi - lo) * t, t)
    cdf = cdf / cdf[-1]
    i = int(torch.searchsorted(cdf, torch.tensor(0.5, dtype=torch.float64)))
    return float(x[i + 1])


def matrix_snr(weight: torch.Tensor) -> tuple[float, int]:
    """``(snr, signal_rank)`` of a 2-D ``weight`` (any float dtype; computed in float64 on its device)."""
    if weight.ndim != 2:
        raise ValueError(f"matrix_snr needs a 2-D weight, got shape {tuple(weight.shape)}")
    s = torch.linalg.svdvals(weight.detach().to(torch.float64))
    n, m = weight.shape
    big, beta = max(n, m), min(n, m) / max(n, m)
    noise_sd = math.sqrt(float(torch.median(s**2)) / (big * marchenko_pastur_median(round(beta, 6))))
    threshold = noise_sd * math.sqrt(big) * (1 + math.sqrt(beta))
    above = s > threshold
    signal, noise = float(s[above].sum()), float(s[~above].sum())
    return (math.inf if noise == 0 else signal / noise), int(above.sum())


def _module_type(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[i + 1:]) or name
    return parts[-1]


def _embedding_ids(model: nn.Module) -> set[int]:
    ids = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        try:
            module = fn() if callable(fn) else None
        except (AttributeError, NotImplementedError):
            module = None
        if module is not None and getattr(module, "weight", None) is not None:
            ids.add(id(module.weight))
    return ids


def spectrum_scan(model: nn.Module, module_types: list[str] | None = None) -> list[SpectrumEntry]:
    """SNR of every ``nn.Linear`` weight (embeddings and LM head excluded), ranked from highest to lowest.

    Args:
        model: any ``nn.Module``; a ``PreTrainedModel`` or a loaded checkpoint.
        module_types: only these types (e.g. ``["self_attn.q_proj", "mlp.down_proj"]``); ``None`` scans all.

    Returns:
        ``SpectrumEntry(name, module_type, snr, signal_rank)`` sorted by ``snr`` descending (ties by name).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"spectrum_scan needs a torch.nn.Module, got {type(model).__name__}")
    skip = _embedding_ids(model)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) not in skip]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer (besides embeddings/LM head) to scan; "
                         "Spectrum ranks Linear weight matrices, so pass a transformer with Linear projections")
    available = sorted({_module_type(n) for n, _ in linears})
    if module_types is not None:
        unknown = [t for t in module_types if t not in available]
        if unknown:
            raise ValueError(f"module_types {unknown} are not in this model; its types are {available}")
        linears = [(n, m) for n, m in linears if _module_type(n) in module_types]
    entries = []
    for name, module in linears:
        snr, rank = matrix_snr(module.weight)
        entries.append(SpectrumEntry(name, _module_type(name), snr, rank))
    return sorted(entries, key=lambda e: (-e.snr, e.name))


def spectrum_freeze(
    model: nn.Module,
    top_percent: float = 25,
    *,
    scan: list[SpectrumEntry] | None = None,
    train_embeddings: bool = True,
) -> dict[str, list[str]]:
    """Freeze ``model`` except the top ``top_percent`` % of each module type by SNR (at least one per type), and
    the embeddings/LM head when ``train_embeddings`` (Spectrum always trains them). Call before building the
    optimizer (Spectrum's selection is static).

    Args:
        top_percent: in (0, 100]; the paper uses 25 and 50.
        scan: a previous :func:`spectrum_scan` result (saves the SVDs); ``None`` scans now.

    Returns:
        ``{"unfrozen_modules": [...], "unfrozen_parameters": [...]}`` (the second as anchored regexes, the format
        Axolotl reads). Nothing is changed when an argument is invalid.
    """
    if isinstance(top_percent, bool) or not isinstance(top_percent, (int, float)) or not 0 < top_percent <= 100:
        raise ValueError(f"top_percent={top_percent!r} must be a number in (0, 100], e.g. 25 or 50")
    entries = spectrum_scan(model) if scan is None else list(scan)
    by_type: dict[str, list[SpectrumEntry]] = {}
    for e in sorted(entries, key=lambda e: (-e.snr, e.name)):
        by_type.setdefault(e.module_type, []).append(e)
    chosen = []
    for group in by_type.values():
        k = max(1, math.ceil(len(group) * top_percent / 100))
        chosen += [e.name for e in group[:k]]
    modules = dict(model.named_modules())
    missing = [n for n in chosen if n not in modules]
    if missing:
        raise ValueError(f"scan names modules {missing[:3]} that this model does not have; rescan this model")
    keep = {id(p) for n in chosen for p in modules[n].parameters()}
    if train_embeddings:
        keep |= _embedding_ids(model)
    unfrozen_params = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in keep)
        if id(p) in keep:
            unfrozen_params.append("^" + re.escape(name) + "$")
    return {"unfrozen_modules": sorted(chosen), "unfrozen_parameters": unfrozen_params}
