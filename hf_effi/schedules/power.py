"""Power scheduler: the lr follows a power law in the tokens seen, scaled by the batch size, with a warmup and a
final decay.

Shen et al., "Power Scheduler: A Batch Size and Token Number Agnostic Learning Rate Scheduler" (arXiv 2408.13359).
Under WSD the optimal lr follows ``eta_opt = beta * a * T ** b`` (``beta`` the batch size in sequences, ``T`` the
training tokens); the scheduler uses the same law in the tokens ``n`` seen so far::

    eta(n) = min(eta_max, beta * a * n ** b)                                   (power law, Eq. (5)-type)

with a linear warmup to the value at the end of warmup and a final decay over the last ``decay_ratio`` of the run.
``eta_max`` is the optimizer's learning rate (the scheduler multiplies it), so the multiplier is
``min(1, beta * a * n ** b / eta_max)``.

Caveats. The constants ``a = 4``, ``b = -0.51`` (and the paper's ``eta_max = 0.02``) were fitted with muP
(Maximal Update Parametrization): with standard parametrization the absolute lr they give is not tuned and should be
treated as a starting point only. ``a`` is reported both as 4 and as about 4.6 in public code and write-ups; 4 is
the default here. The shape of the final decay is not fixed by what we verified of the paper: the default is
MiniCPM's exponential decay (the WSD the paper builds on); ``decay_type`` picks another.
"""

from __future__ import annotations

import functools

from hf_effi.schedules.shapes import DECAY_TYPES, decay_shape, steps_from

__all__ = ["build_power", "power"]


def _law(step: int, *, batch_size: int, seq_len: int, a: float, b: float, peak_lr: float) -> float:
    tokens = step * batch_size * seq_len  # tokens consumed before the update at ``step``
    if tokens <= 0:
        return 1.0
    return min(1.0, batch_size * a * tokens**b / peak_lr)


def power(
    step: int,
    *,
    num_training_steps: int,
    num_warmup_steps: int,
    num_decay_steps: int,
    batch_size: int,
    seq_len: int,
    a: float,
    b: float,
    peak_lr: float,
    decay_type: str = "exponential",
) -> float:
    """Multiplier of ``peak_lr``: warmup to the law's value at step ``W``, the law, then a decay from its value at
    the decay start."""
    law = functools.partial(_law, batch_size=batch_size, seq_len=seq_len, a=a, b=b, peak_lr=peak_lr)
    if step < num_warmup_steps:
        return step / num_warmup_steps * law(num_warmup_steps)
    decay_start = num_training_steps - num_decay_steps
    if num_decay_steps == 0 or step < decay_start:
        return law(step)
    q = (step - decay_start) / num_decay_steps
    return law(decay_start) * decay_shape(q, decay_type, num_decay_steps)


def build_power(
    *,
    num_training_steps: int,
    num_warmup_steps: int,
    peak_lr: float,
    batch_size: int | None = None,
    seq_len: int | None = None,
    a: float = 4.0,
    b: float = -0.51,
    decay_ratio: int | float = 0.1,
    decay_type: str = "exponential",
):
    """``batch_size``: sequences per optimizer step over all processes and accumulation steps; ``seq_len``: tokens
    per sequence (so ``batch_size * seq_len`` tokens per step). ``decay_ratio``: steps (int) or fraction (float)."""
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if value is None:
            raise ValueError(
                f"schedule 'power' needs {name}: its lr is a law in the tokens seen and the batch size; pass "
                "schedule_kwargs={'batch_size': SEQUENCES_PER_OPTIMIZER_STEP, 'seq_len': TOKENS_PER_SEQUENCE} "
                "(batch_size counts every process and accumulation step)"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"power: {name}={value!r} must be a positive int")
    if not a > 0:
        raise ValueError(f"power: a={a} must be > 0 (the paper's fit with muP is about 4)")
    if not b < 0:
        raise ValueError(f"power: b={b} must be < 0 (the paper's exponent is -0.51)")
    if not peak_lr > 0:
        raise ValueError(f"power: the optimizer's learning rate ({peak_lr}) is the cap eta_max and must be > 0")
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"power: decay_type={decay_type!r} is not one of {', '.join(DECAY_TYPES)}")
    num_decay_steps = steps_from("decay_ratio", decay_ratio, num_training_steps)
    if num_warmup_steps + num_decay_steps > num_training_steps:
        raise ValueError(
            f"power: warmup ({num_warmup_steps} steps) + decay ({num_decay_steps} steps) is longer than "
            f"num_training_steps={num_training_steps}; shorten warmup or decay_ratio, or train longer"
        )
    settings = dict(
        num_training_steps=num_training_steps,
        num_warmup_steps=num_warmup_steps,
        num_decay_steps=num_decay_steps,
        batch_size=batch_size,
        seq_len=seq_len,
        a=float(a),
        b=float(b),
        peak_lr=float(peak_lr),
        decay_type=decay_type,
    )
    return functools.partial(power, **settings), settings
