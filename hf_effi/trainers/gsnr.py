"""``GSNRCallback``: the gradient signal-to-noise ratio of every layer, logged during training.

Liu et al., "Understanding Why Neural Networks Generalize Well Through GSNR of Parameters", ICLR 2020,
arXiv 2001.07384: for parameter ``j``, ``r_j = mean(g_j)^2 / var(g_j)`` over the data distribution; a larger GSNR
goes with a smaller generalisation gap, and per layer it is a signal of which layers are still learning.

Where the samples of ``g`` come from (our choice): the micro-batches of one optimizer step. With ``M =
gradient_accumulation_steps >= 2`` micro-batches, a tensor hook on every trainable parameter sees each micro-batch's
gradient ``g_i`` before it is added to ``.grad`` (so before clipping). Per group of parameters (a decoder layer, by
default), with ``gbar_j = mean_i g_ij`` and the unbiased ``s2_j = sum_i (g_ij - gbar_j)^2 / (M - 1)``:

* ``reduction="ratio_of_sums"`` (default): ``sum_j gbar_j^2 / sum_j s2_j``. It needs two dot products per parameter
  and micro-batch (``|g_i|^2``, and ``g_i . .grad``, which gives ``|sum_i g_i|^2`` without a copy) and no memory
  the size of the parameters: cheap enough to leave on.
* ``reduction="mean_of_ratios"``: the paper's average GSNR, ``mean_j gbar_j^2 / s2_j`` over the elements with
  ``s2_j > 0``. It keeps two fp32 buffers the size of the trainable parameters during a measured step (2 x 4
  bytes per parameter) and, with few micro-batches, is dominated by elements whose variance estimate is tiny
  (for ``M = 2`` the per-element ratio has no finite mean): a diagnostic, not a monitor.

Both are the plug-in estimate from ``M`` samples: ``gbar^2`` over-estimates ``mean^2`` by ``var / M``, so pure noise
reads about ``1 / M``, not 0. A loss scale (fp16) or the ``1/M`` loss scaling of accumulation cancels in the ratio.

Only every ``every_n_steps``-th optimizer step is measured: the hooks are registered when that step begins and
removed before the optimizer runs, so other steps pay nothing. Measured (``benchmarks/bench_infobatch.py``, 20.5M
Llama of ``pretrain_task``, 4 micro-batches of 2 x 32 tokens, CPU, shared 2-core machine): ``ratio_of_sums`` every step
costs +3.9% step CPU time (+4.1% wall); every 10th step, within the timing noise (-1.5% CPU, +1.0% wall).
Under DDP each process measures its own micro-batches; numerators and denominators (or the per-group means) are
averaged over processes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from transformers import TrainerCallback

__all__ = ["GSNRCallback", "layer_of"]

REDUCTIONS = ("ratio_of_sums", "mean_of_ratios")
_NUMBERED = re.compile(r"^(.*?\.\d+)\.")


def layer_of(name: str) -> str:
    """The group of a parameter name: up to its first numbered module (``model.layers.3``), else its module."""
    name = name.removeprefix("module.")
    match = _NUMBERED.match(name)
    if match:
        return match.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


class GSNRCallback(TrainerCallback):
    """Log ``gsnr/<group>`` for every parameter group and ``gsnr/all`` (all trainable parameters) with Trainer's logs.

    Args:
        every_n_steps: measure every this many optimizer steps (1: every step).
        group_by: ``"layer"`` (:func:`layer_of`: decoder layers, embeddings, final norm, head), ``"parameter"`` (each
            parameter tensor), or a function from a parameter name to its group name.
        reduction: ``"ratio_of_sums"`` (cheap, default) or ``"mean_of_ratios"`` (the paper's average; memory).

    Values land in the logs at the next logging step (so in ``trainer.state.log_history``); every measurement is
    kept in ``self.history`` as ``{"step": s, "gsnr/<group>": value, ...}``. Needs gradient_accumulation_steps >= 2.
    """

    def __init__(
        self, every_n_steps: int = 10, group_by: str | Callable[[str], str] = "layer", reduction: str = "ratio_of_sums"
    ):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an int >= 1 (e.g. 10), got {every_n_steps!r}")
        if not callable(group_by) and group_by not in ("layer", "parameter"):
            raise ValueError(f"group_by must be 'layer', 'parameter' or a function name -> group, got {group_by!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
        self.every_n_steps = every_n_steps
        self.group_of = layer_of if group_by == "layer" else (lambda n: n) if group_by == "parameter" else group_by
        self.reduction = reduction
        self.history: list[dict] = []
        self._params: list[tuple[str, torch.nn.Parameter, int]] = []
        self._groups: list[str] = []
        self._handles: list = []

    # --- setup ------------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.gradient_accumulation_steps < 2:
            raise ValueError(
                f"GSNRCallback needs gradient_accumulation_steps >= 2 (got {args.gradient_accumulation_steps}): the "
                "micro-batches of a step are its samples of the gradient. Halve per_device_train_batch_size and set "
                "gradient_accumulation_steps=2 to keep the same batch."
            )
        if model is None:
            raise ValueError("GSNRCallback needs the model passed to on_train_begin (Trainer does this)")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("GSNRCallback found no trainable parameters in the model")
        groups = {}
        self._params = [(n, p, groups.setdefault(self.group_of(n), len(groups))) for n, p in named]
        self._groups = list(groups)

    def on_step_begin(self, args, state, control, **kwargs):
        if (state.global_step + 1) % self.every_n_steps == 0 and not self._handles:
            self._start()

    def _start(self) -> None:
        device = self._params[0][1].device
        self._sq = torch.zeros(len(self._groups), dtype=torch.float64, device=device)  # sum_i |g_i|^2
        self._cross = torch.zeros_like(self._sq)  # 2 sum_i g_i . (g_1 + ... + g_{i-1})
        self._sum: dict[int, torch.Tensor] = {}
        self._sumsq: dict[int, torch.Tensor] = {}
        self._count = 0
        self._handles = [p.register_hook(self._hook(k, p, group)) for k, (_, p, group) in enumerate(self._params)]

    def _hook(self, k: int, param: torch.nn.Parameter, group: int):
        def hook(grad: torch.Tensor) -> None:
            g = grad.detach().float()
            flat = g.reshape(-1)
            self._sq[group] += torch.dot(flat, flat).to(self._sq)
            if param.grad is not None:
                self._cross[group] += 2.0 * torch.dot(flat, param.grad.detach().reshape(-1).float()).to(self._sq)
            if self.reduction == "mean_of_ratios":
                if k in self._sum:
                    self._sum[k] += g
                    self._sumsq[k] += g * g
                else:
                    self._sum[k], self._sumsq[k] = g.clone(), g * g
            if k == 0:  # the first trainable parameter (usually the embedding) takes part in every backward
                self._count += 1

        return hook

    # --- measurement ------------------------------------------------------------------------------------------

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self._handles:
            return
        self._remove_hooks()
        m = self._count
        if m >= 2:
            values = self._ratio_of_sums(m) if self.reduction == "ratio_of_sums" else self._mean_of_ratios(m)
            self.history.append({"step": state.global_step + 1, **values})
        self._sum, self._sumsq = {}, {}

    def _ratio_of_sums(self, m: int) -> dict[str, float]:
        mean_sq = (self._sq + self._cross) / m**2  # sum_j gbar_j^2 per group
        var = (self._sq - m * mean_sq) / (m - 1)  # sum_j s2_j per group
        both = _mean_over_processes(torch.stack([mean_sq, var]))
        mean_sq, var = both[0], both[1]
        values = {f"gsnr/{g}": _ratio(mean_sq[i].item(), var[i].item()) for i, g in enumerate(self._groups)}
        values["gsnr/all"] = _ratio(mean_sq.sum().item(), var.sum().item())
        return values

    def _mean_of_ratios(self, m: int) -> dict[str, float]:
        totals = torch.zeros(len(self._groups) + 1, 2, dtype=torch.float64)  # per group: sum of r_j, count
        for k, (_, _, group) in enumerate(self._params):
            if k not in self._sum:
                continue
            mean = self._sum[k] / m
            var = (self._sumsq[k] - m * mean * mean) / (m - 1)
            ok = var > 0
            ratios = (mean[ok] ** 2 / var[ok]).double()
            for row in (group, len(self._groups)):
                totals[row, 0] += ratios.sum().cpu()
                totals[row, 1] += ok.sum().cpu()
        means = torch.where(totals[:, 1] > 0, totals[:, 0] / totals[:, 1].clamp(min=1), torch.nan)
        means = _mean_over_processes(means)
        values = {f"gsnr/{g}": means[i].item() for i, g in enumerate(self._groups)}
        values["gsnr/all"] = means[-1].item()
        return values

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.history or logs is None or "loss" not in logs:
            return
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


def _ratio(signal: float, noise: float) -> float:
    if noise > 0:
        return signal / noise
    return math.inf if signal > 0 else math.nan


def _mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values.cpu()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    values = values.to(device=device, dtype=torch.float64)
    dist.all_reduce(values)
    return (values / dist.get_world_size()).cpu()
