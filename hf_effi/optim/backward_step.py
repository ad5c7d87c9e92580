"""Updates inside backward: one inner optimizer per parameter, stepped from its post-accumulate-grad hook.

As soon as backward has finished accumulating a parameter's gradient on the last micro-batch of an accumulation
window, :class:`LayerwiseOptimizer` steps that parameter and frees its gradient, so the full gradient never exists
at once (gradient memory ~ the largest parameter instead of the whole model). This is the "per-layer weight update"
of GaLore (Zhao et al., arXiv 2403.03507) and the fused update of LOMO (Lv et al., arXiv 2306.09782), built so that
it keeps the contracts of any torch optimizer:

* ``param_groups`` are real: an ``LRScheduler`` drives them and every inner step sees the current values.
* Gradient accumulation works: a parameter updates on the last micro-batch of each window, found by a counter
  (``gradient_accumulation_steps``) or by ``set_sync_source(lambda: accelerator.sync_gradients)``. ``step()`` marks
  the window's end: it updates parameters whose gradient arrived only in earlier micro-batches (what AdamW would do
  with their accumulated gradient) and raises when the loop and the optimizer disagree about the window.
* ``last_grad_norm`` is the exact global L2 norm of the window's (pre-clip) gradient, summed per parameter.
* ``state_dict()`` holds every inner state in torch's format (tensors and numbers only), so Trainer's resume with
  ``torch.load(weights_only=True)`` restores the moments and a resumed run continues bit for bit.

Clipping: global-norm clipping cannot happen before the update, because the global norm is known only after the
last parameter's gradient, when every other parameter has been updated already. ``max_grad_norm_per_param`` clips
each parameter's gradient to that L2 norm instead. Trainer's own ``max_grad_norm`` clipping runs after backward, finds
no gradients and changes nothing: ``clip_grad_norm_`` returns ``tensor(0.)``, which plain Trainer logs as
``grad_norm = 0.0``; log ``last_grad_norm`` instead.

The loop calls ``step()`` once per window, as with any optimizer (Trainer does). Without a sync source Trainer's
short remainder window at an epoch's end is updated in ``step()``, after Trainer's clipping saw those gradients;
the sync source avoids that. Hooks fire once per parameter per backward with tied weights (after both uses) and
with activation checkpointing (reentrant or not).

Not supported: multiple processes (the hook fires before DDP/FSDP average the gradient, so replicas would drift
apart; refused with an error), fp16 ``GradScaler`` (the hook would see loss-scaled gradients), ``step(closure)``.
"""

from __future__ import annotations

import functools
import weakref
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LayerwiseOptimizer", "check_not_distributed"]

_NOT_HYPERPARAMETERS = ("params", "param_names")


def check_not_distributed(world_size: int | None = None) -> None:
    """Raise ``RuntimeError`` if training runs on more than one process (``world_size`` or torch.distributed's)."""
    if world_size is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        world_size = torch.distributed.get_world_size()
    if world_size is not None and world_size > 1:
        raise RuntimeError(
            f"LayerwiseOptimizer cannot run with world_size={world_size}: it updates each parameter inside backward, "
            "before DDP/FSDP average the gradient across processes, so the replicas would drift apart. Train on one "
            "process, or build the optimizer with layerwise=False for multi-process training."
        )


def _post_accumulate_hook(owner: weakref.ref, index: int, param: torch.Tensor) -> None:
    # A weak reference: a discarded optimizer must not keep updating the model.
    optimizer = owner()
    if optimizer is not None and optimizer._params[index] is param:
        optimizer._on_gradient(index)


def _remove_handles(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Wraps one inner optimizer per parameter and steps it inside backward.

    Args:
        params_or_groups: parameters or param-group dicts, as for any torch optimizer (extra keys such as
            ``effi_role`` and ``param_names`` are kept). Every parameter must have ``requires_grad=True``.
        inner_factory: ``inner_factory([group]) -> Optimizer`` where ``group`` is a copy of the parameter's group
            holding only that parameter; e.g. ``lambda groups: torch.optim.AdamW(groups)``.
        gradient_accumulation_steps: backward passes per update, counted per parameter; ignored while a sync
            source is set (:meth:`set_sync_source`).
        max_grad_norm_per_param: clip each parameter's gradient to this L2 norm before its update (``None``: off).
    """

    def __init__(
        self,
        params_or_groups: Any,
        inner_factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
        *,
        gradient_accumulation_steps: int = 1,
        max_grad_norm_per_param: float | None = None,
    ):
        if not callable(inner_factory):
            raise TypeError(
                f"inner_factory must be callable as inner_factory([group]) -> Optimizer, got "
                f"{type(inner_factory).__name__}; e.g. lambda groups: torch.optim.AdamW(groups)"
            )
        ga = gradient_accumulation_steps
        if isinstance(ga, bool) or not isinstance(ga, int) or ga < 1:
            raise ValueError(f"gradient_accumulation_steps must be an int >= 1, got {ga!r}")
        clip = max_grad_norm_per_param
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
            raise ValueError(f"max_grad_norm_per_param must be a positive number or None, got {clip!r}")
        check_not_distributed()
        self._inner_factory = inner_factory
        self.gradient_accumulation_steps = ga
        self.max_grad_norm_per_param = None if clip is None else float(clip)
        self._sync_source: Callable[[], bool] | None = None
        self._params: list[torch.Tensor] = []
        self._param_ids: set[int] = set()  # a deep-copied parameter keeps the owner attribute but is not ours
        self._names: list[str] = []
        self._inners: list[torch.optim.Optimizer] = []
        self._group_of: list[dict[str, Any]] = []
        self._backwards: list[int] = []  # backward passes accumulated into .grad since the last update
        self._updates: list[int] = []  # updates since the last step()
        self._window_norms: list[torch.Tensor] = []
        self._last_norm: float | None = None
        self._flush_only_windows = 0
        self._handles: list = []
        self._release = weakref.finalize(self, _remove_handles, self._handles)
        try:
            super().__init__(params_or_groups, defaults={})  # calls add_param_group for each group
        except BaseException:
            self.remove_hooks()  # nothing half-applied
            raise

    # -- construction ---------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as torch does, then build one inner optimizer and one hook per parameter (all or none)."""
        if not self._release.alive:
            raise RuntimeError("add_param_group after remove_hooks(): build a new LayerwiseOptimizer instead")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            names, inners = self._build_inners(group)
        except BaseException:
            self.param_groups.pop()
            raise
        if inners:  # show the inner defaults (betas, eps) on the group, so schedulers that cycle them work
            for key, value in inners[0].param_groups[0].items():
                if key not in _NOT_HYPERPARAMETERS:
                    group.setdefault(key, value)
            self.defaults = self.defaults or dict(inners[0].defaults)
        for p, name, inner in zip(group["params"], names, inners):
            index = len(self._params)
            self._params.append(p)
            self._param_ids.add(id(p))
            self._names.append(name)
            self._inners.append(inner)
            self._group_of.append(group)
            self._backwards.append(0)
            self._updates.append(0)
            self.state[p] = inner.state[p]  # the same dict: code that walks optimizer.state sees the moments
            p._hf_effi_layerwise_owner = weakref.ref(self)
            hook = functools.partial(_post_accumulate_hook, weakref.ref(self), index)
            self._handles.append(p.register_post_accumulate_grad_hook(hook))

    def _build_inners(self, group: dict[str, Any]) -> tuple[list[str], list[torch.optim.Optimizer]]:
        hyper = {k: v for k, v in group.items() if k not in _NOT_HYPERPARAMETERS}
        names, inners = [], []
        for j, p in enumerate(group["params"]):
            name = group["param_names"][j] if "param_names" in group else f"param #{len(self._params) + j}"
            if not p.requires_grad:
                raise ValueError(
                    f"{name} (shape {tuple(p.shape)}) has requires_grad=False; LayerwiseOptimizer hooks each "
                    "parameter's gradient, so pass only trainable parameters"
                )
            other = getattr(p, "_hf_effi_layerwise_owner", lambda: None)()
            if other is not None and other is not self and other._release.alive and id(p) in other._param_ids:
                raise ValueError(
                    f"{name} is already updated by another live LayerwiseOptimizer; call its remove_hooks() first, "
                    "or two optimizers would update the same parameter inside every backward"
                )
            inner_group = {**hyper, "params": [p]}
            if "param_names" in group:
                inner_group["param_names"] = [name]
            inner = self._inner_factory([inner_group])
            if not isinstance(inner, torch.optim.Optimizer) or len(inner.param_groups) != 1:
                raise TypeError(
                    f"inner_factory must return a torch.optim.Optimizer with one param group, got {inner!r}"
                )
            if len(inner.param_groups[0]["params"]) != 1 or inner.param_groups[0]["params"][0] is not p:
                raise ValueError("inner_factory must build its optimizer over exactly the one parameter it is given")
            names.append(name)
            inners.append(inner)
        return names, inners

    def set_sync_source(self, fn: Callable[[], bool] | None) -> None:
        """Update exactly on backward passes where ``fn()`` is True (e.g. ``lambda: accelerator.sync_gradients``).

        ``None`` goes back to counting ``gradient_accumulation_steps`` backward passes per parameter.
        """
        if fn is not None and not callable(fn):
            raise TypeError(f"set_sync_source needs a callable returning bool or None, got {type(fn).__name__}")
        self._sync_source = fn

    def remove_hooks(self) -> None:
        """Detach from the parameters: later backward passes only accumulate gradients. Idempotent."""
        self._release()
        for p in self._params:
            if getattr(p, "_hf_effi_layerwise_owner", lambda: None)() is self:
                del p._hf_effi_layerwise_owner

    # -- inside backward ------------------------------------------------------------------------------------------
    def _on_gradient(self, index: int) -> None:
        check_not_distributed()
        self._backwards[index] += 1
        if self._sync_source is not None:
            last_micro_batch = bool(self._sync_source())
        else:
            last_micro_batch = self._backwards[index] >= self.gradient_accumulation_steps
        if last_micro_batch:
            self._update(index)

    @torch.no_grad()
    def _update(self, index: int) -> None:
        p, inner = self._params[index], self._inners[index]
        grad = p.grad
        if grad is None:
            return
        norm = torch.linalg.vector_norm(grad, dtype=torch.float32)
        self._window_norms.append(norm)
        if self.max_grad_norm_per_param is not None:
            # torch's clip_grad_norm_ rule (1e-6 guards a zero norm), on this parameter's norm alone
            grad.mul_(torch.clamp(self.max_grad_norm_per_param / (norm + 1e-6), max=1.0).to(grad.dtype))
        inner_group = inner.param_groups[0]
        for key, value in self._group_of[index].items():  # a scheduler's new lr reaches the inner optimizer
            if key not in _NOT_HYPERPARAMETERS:
                inner_group[key] = value
        inner.step()
        self.state[p] = inner.state[p]
        p.grad = None
        self._backwards[index] = 0
        self._updates[index] += 1

    # -- the loop's calls -----------------------------------------------------------------------------------------
    @property
    def last_grad_norm(self) -> float | None:
        """Global L2 norm of the gradient (before per-parameter clipping) of the current window if any parameter
        has been updated since the last ``step()``, else of the last completed window; ``None`` before any update.
        """
        norms = self._window_norms
        if norms:
            return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms])).item()
        return self._last_norm

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        """End the accumulation window: update parameters whose gradient arrived only in earlier micro-batches,
        check that each parameter was updated at most once, and fix ``last_grad_norm``."""
        if closure is not None:
            raise ValueError(
                "LayerwiseOptimizer.step(closure) is not supported: parameters are updated inside backward, so a "
                "closure cannot re-evaluate the loss; call loss.backward() and then step() without a closure"
            )
        if not self._release.alive:
            raise RuntimeError("step() after remove_hooks(): this optimizer no longer updates its parameters")
        hooked_update = any(self._updates)
        pending = [i for i, p in enumerate(self._params) if p.grad is not None]
        for i in pending:
            self._update(i)
        twice = [i for i, n in enumerate(self._updates) if n > 1]
        self._flush_only_windows = self._flush_only_windows + 1 if pending and not hooked_update else 0
        if self._window_norms:
            self._last_norm = self.last_grad_norm
        self._window_norms = []
        self._backwards = [0] * len(self._params)
        self._updates = [0] * len(self._params)
        source = "the sync source" if self._sync_source is not None else "gradient_accumulation_steps"
        if twice:
            raise RuntimeError(
                f"{len(twice)} parameters (e.g. {self._names[twice[0]]}) were updated more than once since the last "
                "step(): "
                f"the loop runs more backward passes per step() than {source} allows "
                f"(gradient_accumulation_steps={self.gradient_accumulation_steps}). Set it to the loop's number of "
                "backward passes per step(), or set_sync_source(lambda: accelerator.sync_gradients) under accelerate "
                "or Trainer. (A parameter used inside two reentrant checkpoint segments fires twice per backward too: "
                "use use_reentrant=False.)"
            )
        if self._flush_only_windows >= 2:
            raise RuntimeError(
                "step() was called twice in a row with no update inside backward: every gradient was still being "
                f"accumulated, so the full gradient existed and the memory saving was lost. {source} expects more "
                f"backward passes per step() (gradient_accumulation_steps={self.gradient_accumulation_steps}) than "
                "the loop runs: set it to the loop's number of backward passes per step(), or "
                "set_sync_source(lambda: accelerator.sync_gradients) under accelerate or Trainer."
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop leftover gradients (always to ``None``: releasing them is the point) and restart the window count."""
        for p in self._params:
            p.grad = None
        self._backwards = [0] * len(self._params)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's format: ``{"state": {i: inner state}, "param_groups": [...]}``, ``i`` over params in group order."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state = {}
        for i, inner in enumerate(self._inners):
            inner_state = inner.state_dict()["state"].get(0)
            if inner_state:
                state[i] = inner_state
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append(
                {**{k: v for k, v in group.items() if k != "params"}, "params": list(range(start, start + n))}
            )
            start += n
        out = {"state": state, "param_groups": groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            out = hook(self, out) or out
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore group hyperparameters and every inner optimizer's state (cast to each parameter's device)."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("load_state_dict needs a dict with 'state' and 'param_groups' (from state_dict())")
        saved_groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        saved_sizes = [len(g["params"]) for g in saved_groups]
        if sizes != saved_sizes:
            raise ValueError(
                f"the saved state has param groups of sizes {saved_sizes}, this optimizer {sizes}; load it into an "
                "optimizer built over the same parameters with the same grouping"
            )
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = defaultdict(dict)
        for i, (p, inner) in enumerate(zip(self._params, self._inners)):
            inner_group = {k: v for k, v in self._group_of[i].items() if k not in _NOT_HYPERPARAMETERS}
            inner_group["params"] = [0]
            if "param_names" in inner.param_groups[0]:
                inner_group["param_names"] = list(inner.param_groups[0]["param_names"])
            saved_state = state_dict["state"].get(i)
            inner.load_state_dict(
                {"state": {} if saved_state is None else {0: saved_state}, "param_groups": [inner_group]}
            )
            self.state[p] = inner.state[p]
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)
