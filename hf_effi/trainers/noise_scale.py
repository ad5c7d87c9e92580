"""``NoiseScaleCallback``: the gradient noise scale (critical batch size) logged during training.

McCandlish et al., "An Empirical Model of Large-Batch Training", arXiv 1812.06162, Appendix A: with squared
gradient norms measured at a small batch ``B_small`` and a big batch ``B_big``, unbiased estimates of ``|G|^2`` and
``tr(Sigma)`` follow (:func:`hf_effi.schedules.laws.noise_scale_from_norms`); each is smoothed by an exponential
moving average and ``B_simple = EMA[tr(Sigma)] / EMA[|G|^2]`` (the paper's "simple" noise scale), an estimate of the critical
batch size.

Where the two batch sizes come from (our choice): gradient accumulation. Each micro-batch of
``per_device_train_batch_size`` rows is the small batch; the ``k = gradient_accumulation_steps`` micro-batches of
one optimizer step together are the big batch (``k`` times larger). Both norms come from a tensor hook on every
trainable parameter, which receives each micro-batch's gradient ``g_i`` before it is added to ``.grad``; there
``.grad`` still holds ``g_1 + ... + g_{i-1}``, so ``|g_1 + ... + g_k|^2 = sum |g_i|^2 + 2 sum_i g_i . grad`` is
accumulated with no extra copy of the gradients, before clipping. This needs ``k >= 2``.

Assumptions: every micro-batch carries the same weight in the accumulated gradient (Trainer scales each by ``1/k``,
or by its share of ``num_items_in_batch``, which is ``1/k`` for equal token counts, e.g. packed pretraining), so the
micro-batch mean gradient is ``k * g_i``. A loss scale (fp16) multiplies both squared norms alike and cancels in
``B_simple``. Under DDP each process measures its local micro and accumulated gradients (before the all-reduce),
and the two squared norms are averaged over processes before the estimate. Batch sizes are in rows (sequences);
``tokens_per_row`` turns the logged value into tokens as well.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from hf_effi.schedules.laws import noise_scale_from_norms

__all__ = ["NoiseScaleCallback"]


class NoiseScaleCallback(TrainerCallback):
    """Log ``noise_scale/b_simple`` (rows; also ``/b_simple_tokens`` given ``tokens_per_row``), ``noise_scale/grad_sq``
    and ``noise_scale/trace_cov`` (EMA-smoothed) with Trainer's logs.

    Args:
        ema: smoothing factor of the two estimates, in [0, 1) (0.95 averages over ~20 optimizer steps);
            the EMAs are bias-corrected as in Adam.
        tokens_per_row: tokens per training row (``seq_len``), to report ``B_simple`` in tokens too.

    The values are added to the logs at every logging step (so they land in ``trainer.state.log_history`` and
    ``trainer_state.json``) and kept per optimizer step in ``self.history``. While the noise dominates, the
    unbiased ``|G|^2`` estimate can be <= 0: ``B_simple`` is then ``inf`` in ``history`` and left out of the logs.
    """

    def __init__(self, ema: float = 0.95, tokens_per_row: int | None = None):
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (e.g. 0.95 averages ~20 steps), got {ema!r}")
        if tokens_per_row is not None and (
            isinstance(tokens_per_row, bool) or not isinstance(tokens_per_row, int) or tokens_per_row <= 0
        ):
            raise ValueError(
                f"tokens_per_row must be a positive int (the sequence length) or None, got {tokens_per_row!r}"
            )
        self.ema = float(ema)
        self.tokens_per_row = tokens_per_row
        self.history: list[dict] = []
        self._handles: list = []
        self._reset_step()
        self._ema_g2 = self._ema_trace = 0.0
        self._ema_count = 0

    # --- gradient hooks ------------------------------------------------------------------------------------------

    def _reset_step(self) -> None:
        # Running sums live on the gradients' devices (one 0-d tensor per device), read once per optimizer step,
        # so the hooks never synchronise with an accelerator.
        self._micro_sq: dict[torch.device, torch.Tensor] = {}  # sum over micro-batches of |g_i|^2
        self._cross: dict[torch.device, torch.Tensor] = {}  # 2 * sum_i g_i . (g_1 + ... + g_{i-1})
        self._micro_count = 0

    @staticmethod
    def _add(sums: dict, value: torch.Tensor) -> None:
        sums[value.device] = sums[value.device] + value if value.device in sums else value

    @staticmethod
    def _total(sums: dict) -> float:
        return sum(float(v) for v in sums.values())

    def _make_hook(self, param: torch.nn.Parameter, counts: bool):
        def hook(grad: torch.Tensor) -> None:
            # dot products: no temporary the size of the gradient (beyond an fp32 copy of a bf16/fp16 one)
            g = grad.detach().reshape(-1).float()
            self._add(self._micro_sq, torch.dot(g, g).double())
            if param.grad is not None:
                self._add(self._cross, 2.0 * torch.dot(g, param.grad.detach().reshape(-1).float()).double())
            if counts:
                self._micro_count += 1

        return hook

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.gradient_accumulation_steps < 2:
            raise ValueError(
                f"NoiseScaleCallback needs gradient_accumulation_steps >= 2 (got {args.gradient_accumulation_steps}): "
                "the micro-batch and the accumulated batch are its two batch sizes. Halve "
                "per_device_train_batch_size and set gradient_accumulation_steps=2 to keep the same batch."
            )
        if model is None:
            raise ValueError("NoiseScaleCallback needs the model passed to on_train_begin (Trainer does this)")
        self._remove_hooks()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("NoiseScaleCallback found no trainable parameters in the model")
        # The first trainable parameter (usually the embedding) takes part in every backward: it counts them.
        self._handles = [p.register_hook(self._make_hook(p, counts=i == 0)) for i, p in enumerate(params)]
        self._reset_step()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        k = self._micro_count
        if k >= 2:
            micro_sq = self._total(self._micro_sq)
            micro_mean = micro_sq / k
            accumulated = micro_sq + self._total(self._cross)
            # Micro-batch mean gradients are k * g_i; the accumulated gradient is their mean, sum_i g_i.
            sq_small, sq_big = k * k * micro_mean, accumulated
            sq_small, sq_big = _mean_over_processes(sq_small, sq_big)
            batch = args.per_device_train_batch_size
            g2, trace = noise_scale_from_norms(sq_small, sq_big, batch, k * batch)
            self._update(state.global_step + 1, g2, trace)
        self._reset_step()

    def _update(self, step: int, g2: float, trace: float) -> None:
        b = self.ema
        self._ema_g2 = b * self._ema_g2 + (1 - b) * g2
        self._ema_trace = b * self._ema_trace + (1 - b) * trace
        self._ema_count += 1
        correction = 1 - b**self._ema_count
        g2_hat, trace_hat = self._ema_g2 / correction, self._ema_trace / correction
        entry = {
            "step": step,
            "noise_scale/grad_sq": g2_hat,
            "noise_scale/trace_cov": trace_hat,
            "noise_scale/b_simple": trace_hat / g2_hat if g2_hat > 0 else math.inf,
        }
        if self.tokens_per_row is not None:
            entry["noise_scale/b_simple_tokens"] = entry["noise_scale/b_simple"] * self.tokens_per_row
        self.history.append(entry)

    @property
    def b_simple(self) -> float | None:
        """The latest EMA estimate of ``B_simple`` in rows, or ``None`` before the first optimizer step."""
        return self.history[-1]["noise_scale/b_simple"] if self.history else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.history or logs is None or "loss" not in logs:
            return
        # A noise-dominated step can make the unbiased |G|^2 estimate <= 0 (B_simple = inf in ``history``);
        # only finite values are logged, so trainer_state.json stays plain JSON.
        values = {k: v for k, v in self.history[-1].items() if k != "step" and math.isfinite(v)}
        logs.update(values)
        # Trainer appended its copy of these logs to log_history just before calling on_log.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hooks()


def _mean_over_processes(sq_small: float, sq_big: float) -> tuple[float, float]:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sq_small, sq_big
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    both = torch.tensor([sq_small, sq_big], dtype=torch.float64, device=device)
    dist.all_reduce(both)
    both /= dist.get_world_size()
    return float(both[0]), float(both[1])
