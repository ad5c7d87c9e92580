"""``SubspaceAdamW``: the optimizer base of every subspace method (GaLore, Fira, APOLLO, FRUGAL, GWT, Grass).

One optimizer holds two kinds of parameter groups (as built by :func:`hf_effi.make_optimizer`):

- groups with ``effi_role == "target"`` hold 2-D matrices. Each step a subclass projects the matrix's gradient
  ``G`` (oriented short side first, ``[s, l]``) into a small space, runs Adam there (:meth:`adam_moments`),
  and maps the result back to a full-size update, with its own residual rule. The projection is refreshed every
  ``update_proj_gap`` steps, on a step staggered per matrix by a hash of its name (:func:`refresh_offset`), so
  no step pays for every refresh at once;
- every other group gets plain AdamW, written op for op as torch's single-tensor AdamW (same numbers).

Weight decay is decoupled, ``W <- W (1 - lr λ)``, before the update, as torch's AdamW. Moments are float32
whatever the parameter dtype. State holds only tensors and numbers: projection bases as tensors, random
projections as their seed (an int; :func:`gaussian_projection` regenerates it), row selections as ``int64``
tensors, counters as numbers or 0-d tensors, so ``torch.load(weights_only=True)`` works and a resumed run repeats
the uninterrupted one bit for bit. ``load_state_dict`` keeps the saved dtypes (torch would cast every state tensor
to the parameter's dtype, turning indices into floats and fp32 moments of bf16 parameters into bf16).

Names: seeds and stagger offsets come from the group's ``param_names`` (what ``make_optimizer`` and the layer-wise
inner optimizers carry), so DDP ranks and layer-wise / whole-model runs agree. Without names a parameter is
called ``group{i}.param{j}``, which differs between layer-wise and whole-model construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from hf_effi.optim.subspace.projectors import oriented, refresh_offset, stable_seed

__all__ = ["SubspaceAdamW"]

_MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "adam_step")


def _check_number(method: str, name: str, value: Any, *, low: float, low_inclusive: bool, high: float | None = None):
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{method}: {name} must be a number {bound}, got {value!r}")


def check_positive_int(method: str, name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int >= 1`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{method}: {name} must be an int >= 1, got {value!r}")


def check_choice(method: str, name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{method}: {name}={value!r} is not supported; choose one of {list(choices)}")


class SubspaceAdamW(torch.optim.Optimizer):
    """Base class: AdamW on ordinary groups, a projected Adam on ``effi_role="target"`` groups.

    Subclasses set ``method`` and implement :meth:`update` (and :meth:`refresh` when ``refreshes`` is True,
    :meth:`check_matrix` for their own shape rules).

    Args:
        params: parameters or param-group dicts; groups may carry ``effi_role`` and ``param_names``.
        lr: learning rate (``> 0``).
        betas, eps: Adam's, for both kinds of groups.
        weight_decay: decoupled weight decay (default; groups from ``make_optimizer`` set their own).
        update_proj_gap: steps between projection refreshes (``T``).
        stagger: spread refreshes over ``T`` steps by a per-matrix offset; ``False`` refreshes all matrices
            on steps ``1, T + 1, 2T + 1, ...`` as the papers' code does.
        seed: mixed into every random projection's seed (all ranks must pass the same).
        **method_defaults: the subclass's hyperparameters, stored in each group.
    """

    method = "subspace"
    refreshes = True  # False for fixed transforms (GWT)

    def __init__(
        self,
        params: Any,
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        update_proj_gap: int = 200,
        stagger: bool = True,
        seed: int = 0,
        **method_defaults: Any,
    ):
        m = self.method
        _check_number(m, "lr", lr, low=0.0, low_inclusive=False)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{m}: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            _check_number(m, f"betas[{i}]", b, low=0.0, low_inclusive=True, high=1.0 - 1e-12)
        _check_number(m, "eps", eps, low=0.0, low_inclusive=True)
        _check_number(m, "weight_decay", weight_decay, low=0.0, low_inclusive=True)
        check_positive_int(m, "update_proj_gap", update_proj_gap)
        if not isinstance(stagger, bool):
            raise TypeError(f"{m}: stagger must be True or False, got {stagger!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{m}: seed must be an int (the same on every rank), got {seed!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            update_proj_gap=update_proj_gap,
            stagger=stagger,
            seed=seed,
            **method_defaults,
        )
        self._caches: dict[int, tuple[int, torch.Tensor]] = {}  # regenerable projections, keyed by id(param)
        super().__init__(params, defaults)

    # -- construction ---------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, then the target matrices' checks (the group is dropped if one fails)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("effi_role") != "target":
            return
        try:
            for p, name in zip(group["params"], self._param_names(group, len(self.param_groups) - 1)):
                if p.ndim != 2:
                    raise ValueError(
                        f"{self.method}: target parameter {name!r} has shape {tuple(p.shape)}, but only 2-D matrices "
                        "can be projected; give it another effi_role or leave it out of target_modules"
                    )
                self.check_matrix(name, tuple(oriented(p).shape), group)
        except BaseException:
            self.param_groups.pop()
            raise

    def check_matrix(self, name: str, shape: tuple[int, int], group: dict[str, Any]) -> None:
        """Subclass hook: raise ``ValueError`` if matrix ``name`` (oriented ``[s, l]``) does not fit the settings."""

    def check_rank(self, name: str, shape: tuple[int, int], rank: int) -> None:
        """Refuse ``rank`` larger than the short side of a target matrix (``rank == s`` means no projection)."""
        if rank > shape[0]:
            raise ValueError(
                f"{self.method}: rank={rank} is larger than the short side ({shape[0]}) of target matrix {name!r} "
                f"(oriented shape {shape}); pass rank<={shape[0]} (rank={shape[0]} is plain Adam on that matrix) "
                "or leave the matrix out with target_modules"
            )

    @staticmethod
    def _param_names(group: dict[str, Any], index: int) -> list[str]:
        names = group.get("param_names")
        return list(names) if names else [f"group{index}.param{j}" for j in range(len(group["params"]))]

    # -- the step -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            target = group.get("effi_role") == "target"
            for p, name in zip(group["params"], self._param_names(group, index)):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError(f"{self.method} does not support sparse gradients ({name!r})")
                if target:
                    self._target_step(p, name, group)
                else:
                    self._adamw_step(p, group)
        return loss

    def _adamw_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        # torch.optim.adam._single_tensor_adam with decoupled weight decay, op for op (same rounding).
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        grad, lr, (beta1, beta2) = p.grad, group["lr"], group["betas"]
        state["step"] += 1
        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = state["step"].item()
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-(lr / bias_correction1))

    def _target_step(self, p: torch.Tensor, name: str, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["refreshes"] = 0
        state["step"] += 1
        g = oriented(p.grad).float()  # [s, l]; no copy for fp32
        if self.refreshes and not self.is_identity(g.shape, group):
            gap = group["update_proj_gap"]
            offset = refresh_offset(name, gap) if group["stagger"] else 0
            t = int(state["step"].item())
            if state["refreshes"] == 0 or (t - 1 + offset) % gap == 0:
                self.refresh(p, g, state, group, stable_seed(name, state["refreshes"], group["seed"]))
                state["refreshes"] += 1
        if group["weight_decay"] != 0:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        self.update(p, oriented(p), g, state, group)

    # -- subclass hooks -------------------------------------------------------------------------------------------
    def is_identity(self, shape: tuple[int, int] | torch.Size, group: dict[str, Any]) -> bool:
        """True when the projection keeps every direction (full rank): then it is the identity, not a rotation,
        because Adam is not rotation-invariant and only the identity makes the method equal AdamW."""
        return False

    def refresh(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict, seed: int) -> None:
        """Recompute the projection of ``p`` from its oriented gradient ``g`` (``seed`` for random draws)."""
        raise TypeError(f"{type(self).__name__} sets refreshes=True but does not define refresh()")

    def update(self, p: torch.Tensor, pv: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        """Apply the method's update to ``pv`` (``p`` oriented like ``g``), weight decay already applied."""
        raise TypeError(f"{type(self).__name__} must define update()")

    # -- shared pieces --------------------------------------------------------------------------------------------
    @staticmethod
    def reset_moments(state: dict) -> None:
        """Forget the Adam moments (and their bias-correction counter), e.g. after the subspace changed."""
        for key in _MOMENT_KEYS:
            state.pop(key, None)

    @staticmethod
    def adam_moments(state: dict, low: torch.Tensor, group: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Adam's moment update on the projected gradient ``low``; returns ``(exp_avg, denom, bias_correction1)``
        with ``denom = sqrt(v̂) + eps``, so ``exp_avg / bias_correction1 / denom`` is Adam's direction
        (Kingma & Ba, arXiv 1412.6980, Alg. 1). Moments are created (float32) on first use or after a reset."""
        if "exp_avg" not in state or state["exp_avg"].shape != low.shape:
            state["exp_avg"] = torch.zeros_like(low, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(low, dtype=torch.float32)
            state["adam_step"] = torch.tensor(0.0, dtype=torch.float32)
        beta1, beta2 = group["betas"]
        state["adam_step"] += 1
        state["exp_avg"].lerp_(low, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(low, low, value=1 - beta2)
        step = state["adam_step"].item()
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
        return state["exp_avg"], denom, 1 - beta1**step

    def adam_direction(self, state: dict, low: torch.Tensor, group: dict) -> torch.Tensor:
        """``N = m̂ / (sqrt(v̂) + eps)`` for the projected gradient ``low`` (a new tensor)."""
        exp_avg, denom, bias_correction1 = self.adam_moments(state, low, group)
        return (exp_avg / denom).div_(bias_correction1)

    def full_rank_adam(self, pv: torch.Tensor, g: torch.Tensor, state: dict, group: dict, scale: float) -> None:
        """The identity projection: torch's AdamW update of ``pv`` times ``scale`` (scale 1: AdamW, bit for bit)."""
        exp_avg, denom, bias_correction1 = self.adam_moments(state, g, group)
        pv.addcdiv_(exp_avg, denom, value=-(group["lr"] / bias_correction1) * scale)

    @staticmethod
    def limit_norm_growth(update: torch.Tensor, state: dict, gamma: float, key: str = "update_norm") -> torch.Tensor:
        """Norm-growth limiter (Fira, Chen et al., arXiv 2410.01623, Sec. 4.2, Eq. (9)): if
        ``‖S_t‖ / ‖S_{t-1}‖ > gamma`` scale ``S_t`` so the ratio is exactly ``gamma``; remembers ``‖S_t‖``
        (after limiting) as a 0-d tensor, so no host sync is needed."""
        norm = torch.linalg.vector_norm(update)
        previous = state.get(key)
        if previous is not None:
            limiter = torch.clamp(norm / (previous + 1e-8), min=gamma) / gamma
            update = update / limiter
            norm = norm / limiter
        state[key] = norm
        return update

    def cached(self, p: torch.Tensor, seed: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A tensor regenerated from ``seed`` (not state: only the seed is saved), kept until the seed changes."""
        hit = self._caches.get(id(p))
        if hit is None or hit[0] != seed:
            hit = (seed, make())
            self._caches[id(p)] = hit
        return hit[1]

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, but state tensors keep their saved dtype (moved to the parameter's device):
        row indices stay ``int64`` and moments stay float32 for low-precision parameters."""
        super().load_state_dict(state_dict)
        self._caches.clear()
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if torch.is_tensor(value) and key != "step":
                    self.state[p][key] = value.to(device=p.device)
