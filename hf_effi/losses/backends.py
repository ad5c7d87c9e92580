"""Which implementation computes :func:`hf_effi.losses.fused_linear_cross_entropy`.

``"torch"`` is the chunked PyTorch path (:mod:`hf_effi.losses.linear_cross_entropy`), available everywhere.
On CUDA, ``"liger"`` (Liger-Kernel's fused linear cross-entropy) and ``"cce"`` (Apple's Cut Cross-Entropy) are used
when installed; ``"auto"`` picks liger, then cce, then torch on CUDA and always torch on CPU. The kernels do not take
per-token weights, so a call with ``token_weights`` always takes the torch path. Neither package is a dependency:
install ``liger-kernel`` or ``cut-cross-entropy`` yourself on a CUDA machine.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from hf_effi.losses.linear_cross_entropy import DEFAULT_CHUNK_SIZE, linear_cross_entropy

__all__ = ["BACKENDS", "available_backends", "fused_linear_cross_entropy", "resolve_backend"]

BACKENDS = ("auto", "torch", "liger", "cce")
_MODULES = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}
ENV_VAR = "HF_EFFI_LOSS_BACKEND"


def _installed(backend: str) -> bool:
    return importlib.util.find_spec(_MODULES[backend]) is not None


def available_backends(device: torch.device | str) -> list[str]:
    """The backends that can run on ``device`` in this environment (``"torch"`` always)."""
    device = torch.device(device)
    kernels = [b for b in ("liger", "cce") if device.type == "cuda" and _installed(b)]
    return [*kernels, "torch"]


def resolve_backend(backend: str | None, device: torch.device | str, *, weighted: bool = False) -> str:
    """``backend`` (or env ``HF_EFFI_LOSS_BACKEND``, else ``"auto"``) resolved to one that runs on ``device``."""
    backend = backend or os.environ.get(ENV_VAR) or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    usable = available_backends(device)
    if backend == "auto":
        return "torch" if weighted else usable[0]
    if backend != "torch":
        if weighted:
            raise ValueError(f"backend={backend!r} does not support token_weights; use backend='torch'")
        if backend not in usable:
            why = "needs a CUDA tensor" if torch.device(device).type != "cuda" else f"needs `pip install {backend}`"
            raise ValueError(f"backend={backend!r} cannot run here ({why}); available: {usable}")
    return backend


def fused_linear_cross_entropy(
    hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    token_weights: Tensor | None = None,
    num_items_in_batch: int | Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str | None = None,
) -> Tensor:
    """Mean (or ``sum / num_items_in_batch``) cross-entropy of a linear head, on the best backend for the device."""
    chosen = resolve_backend(backend, hidden.device, weighted=token_weights is not None)
    if chosen == "torch":
        return linear_cross_entropy(
            hidden, lm_head_weight, labels, bias=bias, ignore_index=ignore_index, token_weights=token_weights,
            num_items_in_batch=num_items_in_batch, softcap=softcap, chunk_size=chunk_size,
        )
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1).long()
    reduction = "mean" if num_items_in_batch is None else "sum"
    if chosen == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        loss = liger_fused_linear_cross_entropy(
            flat_h, lm_head_weight, flat_labels, bias=bias, ignore_index=ignore_index, reduction=reduction,
            softcap=softcap,
        )
    else:
        from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy

        loss = cce_linear_cross_entropy(
            flat_h, lm_head_weight, flat_labels, bias=bias, ignore_index=ignore_index, softcap=softcap,
            reduction=reduction,
        )
    if isinstance(loss, tuple):  # some Liger versions return (loss, z_loss)
        loss = loss[0]
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss
