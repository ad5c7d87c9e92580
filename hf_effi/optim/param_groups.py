"""Parameter grouping shared by every optimizer ``make`` builds.

Only trainable parameters are grouped (so PEFT-wrapped models give only their adapters). Each group carries
``effi_role``:

- ``"decay"``: ordinary weights, with the requested weight decay;
- ``"no_decay"``: biases, norm weights and other parameters with fewer than two dimensions (weight decay 0,
  as in transformers' ``Trainer.get_decay_parameter_names``);
- ``"target"``: the 2-D matrices a method treats specially (e.g. the matrices GaLore projects), only when the
  method asks for targets. By default these are the weights of every ``nn.Linear`` except the input/output
  embeddings (the LM head); ``target_modules`` overrides the choice with module names or a regex, like peft.

Groups also carry ``param_names`` (torch keeps them in ``state_dict``), so a checkpoint says which tensor is which.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["ROLES", "build_param_groups", "select_target_modules"]

ROLES = ("decay", "no_decay", "target")


def _embedding_weights(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                module = fn()
            except (AttributeError, NotImplementedError):
                module = None
            if module is not None and getattr(module, "weight", None) is not None:
                ids.add(id(module.weight))
    return ids


def _name_matches(name: str, target_modules: str | Iterable[str]) -> bool:
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def select_target_modules(model: nn.Module, target_modules: str | Iterable[str] | None = None) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules whose weights a method treats specially, by qualified name.

    Args:
        target_modules: ``None`` or ``"all-linear"`` for every Linear except the embeddings/LM head; a string is
            a regex matched against the full module name; a list matches names equal to, or ending in
            ``"." + item`` (peft's convention, e.g. ``["q_proj", "v_proj"]``).
    """
    embeddings = _embedding_weights(model)
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or id(module.weight) in embeddings:
            continue
        if target_modules not in (None, "all-linear") and not _name_matches(name, target_modules):
            continue
        if module.weight.requires_grad:
            found[name] = module
    if target_modules not in (None, "all-linear") and not found:
        raise ValueError(
            f"target_modules={target_modules!r} matched no trainable nn.Linear module; "
            f"nn.Linear modules in this model include: {', '.join(_linear_names(model)[:8])}"
        )
    return found


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def build_param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    with_targets: bool = False,
    target_modules: str | Iterable[str] | None = None,
) -> list[dict]:
    """Split the trainable parameters of ``model`` into ``decay`` / ``no_decay`` (/ ``target``) groups.

    Raises:
        ValueError: if ``model`` has no trainable parameter.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    target_ids: set[int] = set()
    if with_targets:
        target_ids = {id(m.weight) for m in select_target_modules(model, target_modules).values()}
    no_decay_ids = {
        id(p) for m in model.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(recurse=False)
    }
    buckets: dict[str, tuple[list[torch.Tensor], list[str]]] = {role: ([], []) for role in ROLES}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in target_ids:
            role = "target"
        elif p.ndim < 2 or id(p) in no_decay_ids:
            role = "no_decay"
        else:
            role = "decay"
        buckets[role][0].append(p)
        buckets[role][1].append(name)
    if not any(params for params, _ in buckets.values()):
        raise ValueError(
            "The model has no trainable parameter (every requires_grad is False): unfreeze some parameters or "
            "wrap it with a PEFT adapter before building the optimizer"
        )
    groups = []
    for role in ROLES:
        params, names = buckets[role]
        if params:
            wd = 0.0 if role == "no_decay" else weight_decay
            groups.append({"params": params, "param_names": names, "weight_decay": wd, "effi_role": role})
    return groups
