"""Cross-entropy of a linear head that never holds the full ``[tokens, vocab]`` logits.

``loss = CE(hidden @ weight.T + bias, labels)`` is computed over token chunks: each chunk's logits are built,
reduced to a log-sum-exp and the target logit, and dropped. Backward rebuilds one chunk's logits at a time
(``softmax - onehot``) and accumulates the hidden and weight gradients. Memory is O(chunk_size x vocab) instead of
O(tokens x vocab); the price is one extra ``hidden @ weight.T`` per chunk in backward.

This is the PyTorch path that runs on every device; on CUDA :mod:`hf_effi.losses.backends` can hand the same call
to Liger's or Cut Cross-Entropy's kernel when one of them is installed.

Math is in float32 whatever the input dtype (the logits of a bf16 model are upcast before the softmax, as
transformers' own loss does), and gradients are returned in the inputs' dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DEFAULT_CHUNK_SIZE", "linear_cross_entropy", "linear_cross_entropy_reference"]

DEFAULT_CHUNK_SIZE = 512
_REDUCTIONS = ("mean", "sum", "none")


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """float32 logits of one chunk, and the pre-softcap ``tanh`` (needed for the softcap's derivative)."""
    logits = h.float() @ weight.float().T
    if bias is not None:
        logits += bias.float()
    if softcap is None:
        return logits, None
    t = torch.tanh(logits / softcap)
    return t * softcap, t


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-token losses ``[N]`` (0 where ignored), weighted by ``token_weights``; reduction happens outside."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, token_weights, ignore_index, chunk_size, softcap):
        n = hidden.shape[0]
        valid = labels != ignore_index
        safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        target = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            logits, _ = _chunk_logits(hidden[start:stop], weight, bias, softcap)
            target[start:stop] = logits.gather(1, safe_labels[start:stop, None]).squeeze(1)
            # log-sum-exp in place: one [chunk, vocab] buffer alive at a time
            row_max = logits.amax(dim=-1, keepdim=True)
            lse[start:stop] = logits.sub_(row_max).exp_().sum(-1).log_() + row_max.squeeze(1)
            del logits
        scale = valid.float() if token_weights is None else valid.float() * token_weights.float()
        losses = (lse - target) * scale
        ctx.save_for_backward(hidden, weight, bias, safe_labels, lse, scale)
        ctx.chunk_size, ctx.softcap = chunk_size, softcap
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, bias, labels, lse, scale = ctx.saved_tensors
        chunk_size, softcap = ctx.chunk_size, ctx.softcap
        coef = grad_losses.float() * scale  # d loss_i / d logit_ij = coef_i * (softmax_ij - onehot_ij)
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        w32 = weight.float()
        for start in range(0, hidden.shape[0], chunk_size):
            stop = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:stop]
            logits, t = _chunk_logits(h, weight, bias, softcap)
            d = logits.sub_(lse[start:stop, None]).exp_()  # softmax, in the logits' buffer
            d[torch.arange(stop - start, device=d.device), labels[start:stop]] -= 1.0
            d *= coef[start:stop, None]
            if t is not None:
                d *= 1.0 - t * t  # d(c * tanh(x / c)) / dx
            if need_h:
                grad_h[start:stop] = (d @ w32).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(d.T, h.float())
            if need_b:
                grad_b += d.sum(0)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _check(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, token_weights: Tensor | None,
           reduction: str, chunk_size: int, num_items_in_batch) -> None:
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(
            f"lm_head_weight must be [vocab, hidden] with hidden={hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels must have shape {tuple(hidden.shape[:-1])} (hidden without its last dim), "
                         f"got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if token_weights is not None and token_weights.shape != labels.shape:
        raise ValueError(f"token_weights must have the labels' shape {tuple(labels.shape)}, "
                         f"got {tuple(token_weights.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    devices = {t.device for t in (hidden, weight, labels, bias, token_weights) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"hidden, lm_head_weight, labels (and bias/token_weights) must share a device, got {devices}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if num_items_in_batch is not None and reduction != "mean":
        raise ValueError("num_items_in_batch only applies to reduction='mean' (it replaces the token count)")


def _reduce(losses: Tensor, labels: Tensor, token_weights: Tensor | None, ignore_index: int, reduction: str,
            num_items_in_batch) -> Tensor:
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    if num_items_in_batch is not None:
        # Trainer's gradient-accumulation convention: divide by the tokens of the whole accumulated batch.
        if isinstance(num_items_in_batch, Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    valid = labels != ignore_index
    denom = valid.sum() if token_weights is None else (token_weights.float() * valid).sum()
    return total / denom


def linear_cross_entropy(
    hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    token_weights: Tensor | None = None,
    num_items_in_batch: int | Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """``cross_entropy(hidden @ lm_head_weight.T + bias, labels)`` without materialising the logits.

    Args:
        hidden: ``[..., d]`` final hidden states (already normed, as the LM head sees them).
        lm_head_weight: ``[vocab, d]``; ``bias``: optional ``[vocab]``.
        labels: ``[...]`` target ids, aligned with ``hidden`` (shift them yourself for next-token prediction);
            ``ignore_index`` positions cost nothing.
        reduction: ``"mean"`` (over non-ignored tokens, or weighted mean with ``token_weights``), ``"sum"``,
            ``"none"`` (per-token losses, 0 at ignored positions).
        token_weights: optional ``[...]`` per-token weights (e.g. 1/length of each packed sequence, so every
            sequence counts equally); ``"mean"`` then divides by the sum of the weights.
        num_items_in_batch: Trainer's token count of the whole accumulated batch; ``"mean"`` divides by it.
        softcap: Gemma-2 style final-logit soft-capping ``c * tanh(logits / c)``.
        chunk_size: tokens per chunk; peak extra memory is about ``chunk_size * vocab * 4`` bytes (x2 in backward).
    """
    _check(hidden, lm_head_weight, bias, labels, token_weights, reduction, chunk_size, num_items_in_batch)
    lead = labels.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1).long()
    flat_w = None if token_weights is None else token_weights.reshape(-1)
    losses = _LinearCrossEntropy.apply(
        flat_h, lm_head_weight, bias, flat_labels, flat_w, ignore_index, chunk_size, softcap
    )
    out = _reduce(losses, flat_labels, flat_w, ignore_index, reduction, num_items_in_batch)
    return out.reshape(lead) if reduction == "none" else out


def linear_cross_entropy_reference(
    hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    token_weights: Tensor | None = None,
    num_items_in_batch: int | Tensor | None = None,
    softcap: float | None = None,
) -> Tensor:
    """The plain computation (full float32 logits, ``F.cross_entropy``): what :func:`linear_cross_entropy` equals."""
    _check(hidden, lm_head_weight, bias, labels, token_weights, reduction, 1, num_items_in_batch)
    logits = hidden.float() @ lm_head_weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    flat_labels = labels.reshape(-1).long()
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), flat_labels, ignore_index=ignore_index, reduction="none"
    )
    flat_w = None if token_weights is None else token_weights.reshape(-1)
    if flat_w is not None:
        losses = losses * flat_w.float()
    out = _reduce(losses, flat_labels, flat_w, ignore_index, reduction, num_items_in_batch)
    return out.reshape(labels.shape) if reduction == "none" else out
