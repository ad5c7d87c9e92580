"""Give a causal LM a loss that never holds the ``[tokens, vocab]`` logits: one call, or one Trainer flag.

    hf_effi.losses.patch_linear_cross_entropy(model)        # or EffiTrainingArguments(effi_linear_cross_entropy=True)

The patched ``forward`` runs the backbone, then :func:`hf_effi.losses.fused_linear_cross_entropy` on the last hidden
states and the LM head's weight, with the same next-token shift, ``ignore_index=-100`` and gradient-accumulation
normalisation (``num_items_in_batch``) as transformers' own causal-LM loss. While the model is training and labels are
given it returns ``loss`` with ``logits=None`` (that is the point); in eval mode, or without labels, the original
forward runs, so ``generate()``, ``evaluate()`` with metrics and inference are unchanged.

It also accepts ``token_weights`` (same shape as ``labels``): per-token loss weights, e.g. from
:func:`hf_effi.data.pack` with ``loss_weighting="sequence"``, so each packed sequence counts equally.

The instance's ``forward`` is replaced (the class is untouched); ``unpatch_linear_cross_entropy`` restores it. PEFT
models are patched on their underlying transformers model, which the adapters wrap.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from hf_effi.losses.backends import BACKENDS, fused_linear_cross_entropy
from hf_effi.losses.linear_cross_entropy import DEFAULT_CHUNK_SIZE

__all__ = ["LinearCrossEntropySettings", "is_patched", "patch_linear_cross_entropy", "unpatch_linear_cross_entropy"]

# Config fields of architectures that rescale logits after the head in ways this loss does not reproduce.
_UNSUPPORTED_LOGIT_FIELDS = ("logit_scale", "logits_scaling", "output_multiplier_scale", "logit_scaling")
_ATTR = "_hf_effi_linear_ce"


@dataclass(frozen=True)
class LinearCrossEntropySettings:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    backend: str | None = None
    training_only: bool = True


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside ``model`` (itself, or the one a PeftModel wraps)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _check_supported(lm: nn.Module) -> nn.Linear:
    name = type(lm).__name__
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{name} has no nn.Linear output head (get_output_embeddings()); "
                         "patch_linear_cross_entropy needs a causal LM with a linear LM head")
    prefix = getattr(lm, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(lm, prefix, None), nn.Module):
        raise ValueError(f"{name} has no backbone attribute named by base_model_prefix={prefix!r}")
    config = lm.config
    for field in _UNSUPPORTED_LOGIT_FIELDS:
        value = getattr(config, field, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"{name} rescales its logits ({field}={value}); patch_linear_cross_entropy does not "
                             "support it: use the model's own loss")
    return head


def _shift(t: torch.Tensor, fill: float) -> torch.Tensor:
    """``t[..., 1:]`` padded at the end: position i's target is token i + 1, as in transformers' causal-LM loss."""
    return nn.functional.pad(t, (0, 1), value=fill)[..., 1:]


def _weighted_from_logits(original, args, kwargs, labels, token_weights) -> CausalLMOutputWithPast:
    """Eval-mode weighted loss: the original forward's logits, then the same weighting as the training path."""
    num_items = kwargs.pop("num_items_in_batch", None)
    kwargs.pop("shift_labels", None)
    out = original(*args, **kwargs)
    logits = out.logits.float()
    targets = _shift(labels, -100).to(logits.device)
    weights = _shift(token_weights.to(logits.device, torch.float32), 0.0)
    per_token = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    )
    total = (per_token * weights.reshape(-1)).sum()
    denom = num_items if num_items is not None else (weights * (targets != -100)).sum()
    out.loss = total / (denom.to(total.device) if isinstance(denom, torch.Tensor) else denom)
    return out


def is_patched(model: nn.Module) -> bool:
    return _ATTR in vars(_causal_lm(model))


def patch_linear_cross_entropy(
    model: nn.Module, *, chunk_size: int = DEFAULT_CHUNK_SIZE, backend: str | None = None, training_only: bool = True
) -> nn.Module:
    """Patch ``model`` (a causal LM or a PeftModel around one) in place and return it. Patching twice updates settings.

    Args:
        chunk_size: tokens per chunk of the torch path (peak extra memory about ``chunk_size * vocab * 4`` bytes).
        backend: ``"auto"`` / ``"torch"`` / ``"liger"`` / ``"cce"`` (see :mod:`hf_effi.losses.backends`).
        training_only: use the memory-light loss only while ``model.training``; eval keeps the original forward
            (which returns logits for metrics). ``False`` uses it whenever labels are given.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    lm = _causal_lm(model)
    head = _check_supported(lm)
    settings = LinearCrossEntropySettings(chunk_size, backend, training_only)
    if is_patched(lm):
        setattr(lm, _ATTR, settings)
        return model
    original = lm.forward
    backbone = getattr(lm, lm.base_model_prefix)
    softcap = getattr(lm.config, "final_logit_softcapping", None)

    @functools.wraps(original)
    def forward(*args, labels=None, token_weights=None, **kwargs):
        current: LinearCrossEntropySettings = getattr(lm, _ATTR)
        use_fused = labels is not None and (lm.training or not current.training_only)
        if not use_fused:
            if token_weights is None:
                return original(*args, labels=labels, **kwargs)
            if labels is None:
                raise ValueError("token_weights are loss weights: pass labels with them")
            return _weighted_from_logits(original, args, kwargs, labels, token_weights)
        num_items = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        kwargs.pop("logits_to_keep", None)
        kwargs.pop("return_dict", None)
        outputs = backbone(*args, return_dict=True, **kwargs)
        hidden = outputs.last_hidden_state
        targets = _shift(labels, -100) if shift_labels is None else shift_labels
        weights = None if token_weights is None else _shift(token_weights.to(hidden.device, torch.float32), 0.0)
        loss = fused_linear_cross_entropy(
            hidden, head.weight, targets.to(hidden.device), bias=head.bias, token_weights=weights,
            num_items_in_batch=num_items, softcap=softcap, chunk_size=current.chunk_size, backend=current.backend,
        )
        return CausalLMOutputWithPast(
            loss=loss, logits=None, past_key_values=getattr(outputs, "past_key_values", None),
            hidden_states=getattr(outputs, "hidden_states", None), attentions=getattr(outputs, "attentions", None),
        )

    # Trainer keeps only dataset columns named in forward's signature: advertise token_weights.
    sig = inspect.signature(original)
    params = [p for p in sig.parameters.values() if p.name != "token_weights"]
    extra = inspect.Parameter("token_weights", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    forward.__signature__ = sig.replace(parameters=[*params[:at], extra, *params[at:]])
    setattr(lm, _ATTR, settings)
    lm.forward = forward
    return model


def unpatch_linear_cross_entropy(model: nn.Module) -> nn.Module:
    """Restore the original ``forward`` (a no-op on an unpatched model)."""
    lm = _causal_lm(model)
    if is_patched(lm):
        del lm.forward
        delattr(lm, _ATTR)
    return model
