"""Batch-size rules for EMA hyperparameters: keep an average's half-life fixed in samples (tokens), not in steps.

An EMA with decay ``beta`` forgets half its memory in ``ln 0.5 / ln beta`` steps. When each step sees ``k`` times as
many samples, the same half-life in samples needs ``beta ** k``:

* Busbridge et al., "How to Scale Your EMA", arXiv 2307.13813: the EMA scaling rule ``rho -> rho ** kappa`` when
  the batch grows by ``kappa`` (their EMA Scaling Rule, used alongside the optimizer's own lr scaling rule).
* Marek et al., "Small Batch Size Training for Language Models: When Vanilla SGD Works, and Why Gradient
  Accumulation Is Wasteful", arXiv 2507.07101: apply it to Adam's ``beta2`` (keep the second-moment half-life fixed
  in tokens), e.g. ``beta2 = 0.95`` at batch 512 becomes about ``0.9999`` at batch 1.

:func:`hf_effi.make` applies the rule when given ``batch_size`` and ``reference_batch_size``: the hyperparameters
you pass (or the defaults) are taken as tuned at ``reference_batch_size``, and the *second-moment* EMAs listed in
:data:`BATCH_SCALED` are rescaled. First moments (``beta1``) are left alone: the rule of Marek et al. is stated for
``beta2``, and ``beta1`` also sets the update's direction, not only an average's memory (our choice). CAME's
``beta3`` averages a squared quantity too (the instability), so it is scaled with ``beta2``. Optimizers without a
second-moment EMA (SGD, LARS: their momentum is not a normalised average and we know of no paper rule for it;
Adafactor: ``beta2_decay`` is the exponent of a step schedule, not an EMA constant) are refused with an error.
Other optimizer files declare their decays with :func:`register_batch_rule`.
"""

from __future__ import annotations

import inspect
import math

__all__ = ["BATCH_SCALED", "register_batch_rule", "scale_beta2", "scale_ema", "scale_for_batch_size"]

# optimizer name -> (argument, indices into it that are second-moment EMA decays); None: the argument is a number
BATCH_SCALED: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "adamw": ("betas", (1,)),
    "spam": ("betas", (1,)),
    "lamb": ("betas", (1,)),
    "came": ("betas", (1, 2)),  # beta2 (EMA of G**2) and beta3 (EMA of the instability), both second moments
}


def _check_decay(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be an EMA decay in [0, 1), got {value!r}")
    return float(value)


def _check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def scale_ema(momentum: float, k: float) -> float:
    """``momentum ** k``: the EMA decay that keeps the half-life in samples when each step sees ``k`` x the data.

    Busbridge et al., "How to Scale Your EMA", arXiv 2307.13813 (the EMA scaling rule ``rho -> rho ** kappa``).

    Args:
        momentum: EMA decay in ``[0, 1)`` at the reference batch size.
        k: batch-size ratio ``new / reference`` (``> 0``; below 1 for smaller batches).
    """
    return _check_decay(momentum, "momentum") ** _check_positive(k, "k")


def scale_beta2(beta2: float, batch_ref: float, batch_new: float) -> float:
    """Adam's ``beta2`` for ``batch_new`` that keeps the second-moment half-life fixed in tokens:
    ``beta2 ** (batch_new / batch_ref)``.

    Marek et al., arXiv 2507.07101 (their beta2 rule), which is the EMA rule of Busbridge et al., arXiv 2307.13813.

    Args:
        beta2: decay tuned at ``batch_ref``, in ``[0, 1)``.
        batch_ref, batch_new: batch sizes in samples or tokens (the same unit), ``> 0``.

    Example:
        >>> round(scale_beta2(0.95, 512, 1), 4)
        0.9999
    """
    _check_decay(beta2, "beta2")
    ratio = _check_positive(batch_new, "batch_new") / _check_positive(batch_ref, "batch_ref")
    return scale_ema(beta2, ratio)


def register_batch_rule(name: str, argument: str, indices: tuple[int, ...] | None = None) -> None:
    """Declare which argument of optimizer ``name`` holds second-moment EMA decays (``indices`` into a tuple
    argument such as ``betas``; ``None`` for a plain number), so ``make(batch_size=...)`` can rescale it."""
    BATCH_SCALED[name] = (argument, None if indices is None else tuple(indices))


def scale_for_batch_size(
    name: str, builder, optimizer_kwargs: dict, *, batch_size: float | None, reference_batch_size: float | None
) -> dict:
    """``optimizer_kwargs`` with the EMA decays of optimizer ``name`` rescaled from ``reference_batch_size`` to
    ``batch_size`` (:func:`scale_beta2`); ``builder`` gives the defaults for arguments not passed.

    Raises:
        ValueError: only one of the two batch sizes given, a non-positive size, or an optimizer with no rule.
    """
    if batch_size is None and reference_batch_size is None:
        return optimizer_kwargs
    if batch_size is None or reference_batch_size is None:
        raise ValueError(
            f"batch_size={batch_size!r} and reference_batch_size={reference_batch_size!r}: give both (the batch "
            "you train with and the one the hyperparameters were tuned at) or neither"
        )
    _check_positive(batch_size, "batch_size")
    _check_positive(reference_batch_size, "reference_batch_size")
    if name not in BATCH_SCALED:
        raise ValueError(
            f"optimizer {name!r} has no second-moment EMA to rescale for batch_size, so batch_size/"
            f"reference_batch_size do not apply to it; drop them (and scale the learning rate yourself), or use one "
            f"of: {', '.join(sorted(BATCH_SCALED))}"
        )
    argument, indices = BATCH_SCALED[name]
    value = optimizer_kwargs.get(argument, inspect.signature(builder).parameters[argument].default)
    if indices is None:
        scaled = scale_beta2(value, reference_batch_size, batch_size)
    else:
        scaled = list(value)
        for i in indices:
            scaled[i] = scale_beta2(value[i], reference_batch_size, batch_size)
        scaled = tuple(scaled)
    return {**optimizer_kwargs, argument: scaled}
