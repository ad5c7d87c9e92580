"""Deterministic memory accounting: optimizer-state bytes, bytes saved for backward, peak memory (CPU and CUDA).

Every count is in bytes of unique *storages* (two views of one buffer count once, a view counts its whole
buffer, because that is what stays allocated). On CPU all three numbers are exact and repeatable, so tests can
assert ``==`` on them; on CUDA the peak comes from the caching allocator's ``max_memory_allocated``.

Activation arithmetic to compare against: Korthikanti et al., "Reducing Activation Recomputation in Large
Transformer Models", arXiv:2205.05198.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = [
    "MemoryReport",
    "format_bytes",
    "optimizer_state_bytes",
    "peak_memory",
    "reachable_tensor_bytes",
    "saved_activation_bytes",
    "tensor_storages",
]


def tensor_storages(t: torch.Tensor) -> Iterator[torch.UntypedStorage]:
    """The storages behind ``t``; a traceable wrapper subclass (e.g. DTensor) yields those of its inner tensors."""
    if is_traceable_wrapper_subclass(t):
        inner_names, _ = t.__tensor_flatten__()
        for name in inner_names:
            yield from tensor_storages(getattr(t, name))
    else:
        yield t.untyped_storage()


def _storage_key(st: torch.UntypedStorage) -> tuple[str, int]:
    # The data pointer identifies a live buffer; callers keep the tensors alive while counting, so no reuse.
    # Meta and fake storages have no data (pointer 0): the address of their StorageImpl identifies them instead.
    if st.device.type == "meta":
        return ("meta", st._cdata)
    return (str(st.device), st.data_ptr())


def _count_unique(tensors: Iterable[torch.Tensor], exclude: Collection[tuple[str, int]] = ()) -> int:
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        for st in tensor_storages(t):
            key = _storage_key(st)
            if key not in exclude and st.nbytes() > 0:
                seen[key] = st.nbytes()
    return sum(seen.values())


def _reachable_tensors(obj: Any, visited: set[int]) -> Iterator[torch.Tensor]:
    """Tensors reachable from ``obj`` through dicts, lists, tuples, sets, nested optimizers' ``.state`` and plain
    objects' ``__dict__``. Modules are not entered (a model is not optimizer state); cycles are cut by ``id``."""
    if id(obj) in visited:
        return
    visited.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, nn.Module):
        return
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _reachable_tensors(value, visited)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            yield from _reachable_tensors(value, visited)
    elif isinstance(obj, torch.optim.Optimizer):
        # An inner optimizer's param_groups hold the parameters themselves: only its state is state.
        yield from _reachable_tensors(obj.state, visited)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from _reachable_tensors(vars(obj), visited)


def _param_storage_keys(optimizer: Any) -> set[tuple[str, int]]:
    params = [p for group in getattr(optimizer, "param_groups", []) for p in group.get("params", [])]
    return {_storage_key(st) for p in params if isinstance(p, torch.Tensor) for st in tensor_storages(p)}


def optimizer_state_bytes(optimizer: Any, *, from_state_dict: bool = False) -> int:
    """Bytes of the unique tensor storages held as optimizer state.

    Walks ``optimizer.state`` (or ``optimizer.state_dict()["state"]`` with ``from_state_dict=True``, which also sees
    state an optimizer keeps outside ``.state`` but exports) through dicts, lists, tuples, inner optimizers and
    plain objects (e.g. projector objects holding matrices). Storages of the optimizer's own parameters are not
    counted. For ``torch.optim.AdamW`` after one step this is exactly ``2 * sum(p.numel() * p.element_size())
    + 4 * n_params`` (``exp_avg``, ``exp_avg_sq`` and a float32 ``step`` scalar per parameter).

    Args:
        optimizer: a ``torch.optim.Optimizer`` or any object with a ``.state`` mapping (wrapper optimizers).
        from_state_dict: walk ``state_dict()["state"]`` instead of ``.state``.
    """
    if from_state_dict:
        if not callable(getattr(optimizer, "state_dict", None)):
            raise TypeError(
                f"optimizer_state_bytes(from_state_dict=True) needs an object with state_dict(), got "
                f"{type(optimizer).__name__}; pass from_state_dict=False to walk its .state instead"
            )
        root = optimizer.state_dict().get("state", {})
    else:
        if not hasattr(optimizer, "state"):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or have a .state mapping, got "
                f"{type(optimizer).__name__}; pass the optimizer itself, not its param groups"
            )
        root = optimizer.state
    return _count_unique(_reachable_tensors(root, set()), exclude=_param_storage_keys(optimizer))


def reachable_tensor_bytes(obj: Any) -> int:
    """Bytes of the unique tensor storages reachable from ``obj`` (e.g. a transformers ``Cache`` during decoding)
    through dicts, lists, tuples and plain objects' attributes; modules are not entered."""
    return _count_unique(_reachable_tensors(obj, set()))


def _is_parameter(t: torch.Tensor) -> bool:
    return isinstance(t, nn.Parameter) or isinstance(getattr(t, "_base", None), nn.Parameter)


def saved_activation_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Bytes of the unique storages autograd saves for backward while ``fn(*args, **kwargs)`` runs.

    Counted through ``torch.autograd.graph.saved_tensors_hooks``. Parameters (``nn.Parameter`` and views of one,
    trainable or frozen) are **excluded**: they stay allocated whether or not a backward is coming, so they are
    not activation memory. Every other saved tensor counts, inputs included. Casts of parameters (autocast copies)
    are new buffers and count. Tensors saved as ``ctx.attr`` instead of ``ctx.save_for_backward`` are invisible.
    Under non-reentrant checkpointing only the checkpoint's own inputs reach these hooks, so the count is what
    checkpointing really keeps. The output of ``fn`` is dropped.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (a forward or forward+loss), got {type(fn).__name__}")
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not _is_parameter(t):
            saved.append(t)  # keeps the buffer alive until counted, so a data pointer is never reused
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return _count_unique(saved)


@dataclass
class MemoryReport:
    """Peak memory of one call.

    ``peak_bytes`` is the highest memory in use during the call minus ``baseline_bytes``, the memory already in use
    when it started (on CPU: only what the tracker sees, i.e. tensors created in the call plus the tracked
    modules, optimizers and tensor arguments). ``breakdown`` is, on CPU, the absolute bytes per category at the
    peak (Parameter, Buffer, Gradient, Activation, Temp, Optstate, Other, Total); ``None`` on CUDA.
    """

    peak_bytes: int
    device: str
    method: str
    baseline_bytes: int = 0
    breakdown: dict[str, int] | None = field(default=None)


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors_in(v)]
    return []


def _infer_device(modules: list[nn.Module], tensors: list[torch.Tensor]) -> torch.device:
    for module in modules:
        for p in module.parameters():
            return p.device
    for t in tensors:
        return t.device
    return torch.device("cpu")


def _peak_cpu(fn, args, kwargs, modules, optimizers, tensors) -> MemoryReport:
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*modules, *optimizers, *tensors)
    start = tracker.get_tracker_snapshot("current")
    baseline = sum(snap.get("Total", 0) for snap in start.values())
    with tracker:
        fn(*args, **kwargs)
    peak = tracker.get_tracker_snapshot("peak")
    breakdown: dict[str, int] = {}
    for snap in peak.values():
        for key, value in snap.items():
            name = key.value if hasattr(key, "value") else str(key)
            breakdown[name] = breakdown.get(name, 0) + int(value)
    # MemTracker starts its peak at the snapshot taken on entry, so the peak is never below the baseline
    return MemoryReport(breakdown.get("Total", 0) - baseline, "cpu", "torch MemTracker", baseline, breakdown)


def _peak_cuda(fn, args, kwargs, device: torch.device) -> MemoryReport:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn(*args, **kwargs)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return MemoryReport(peak - baseline, str(device), "torch.cuda.max_memory_allocated", baseline, None)


def peak_memory(
    fn: Callable[..., Any],
    *args: Any,
    device: str | torch.device | None = None,
    modules: Iterable[nn.Module] = (),
    optimizers: Iterable[Any] = (),
    **kwargs: Any,
) -> MemoryReport:
    """Peak memory of ``fn(*args, **kwargs)`` above what was in use when it started.

    CPU: ``torch.distributed._tools.mem_tracker.MemTracker`` (a dispatch mode that follows every storage), with
    ``modules``, ``optimizers`` and the tensor arguments registered through ``track_external`` so parameters,
    gradients and optimizer state are categorised; deterministic, two runs of the same call give the same bytes.
    Tensors created before the call and not passed here are invisible on CPU, except the parameters of modules
    run inside the call, which MemTracker picks up on their first forward and so counts as allocated by the call:
    pass ``modules=[model]`` to keep them in the baseline. CUDA: synchronize,
    ``reset_peak_memory_stats``, ``max_memory_allocated`` minus ``memory_allocated`` before the call.

    Args:
        fn: the callable to measure (e.g. forward + backward + ``optimizer.step()``).
        device: ``"cpu"``/``"cuda[:i]"``; by default the device of the first module parameter or tensor argument.
        modules: modules whose parameters, buffers and gradients should be tracked and categorised (CPU).
        optimizers: optimizers whose existing state should be tracked (CPU).
    """
    modules, optimizers = list(modules), list(optimizers)
    for m in modules:
        if not isinstance(m, nn.Module):
            raise TypeError(f"modules must hold nn.Module objects, got {type(m).__name__}; pass e.g. modules=[model]")
    tensors = _tensors_in(list(args)) + _tensors_in(kwargs)
    dev = torch.device(device) if device is not None else _infer_device(modules, tensors)
    gc.collect()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} asks for CUDA but torch.cuda.is_available() is False; use device='cpu'"
            )
        return _peak_cuda(fn, args, kwargs, dev)
    if dev.type != "cpu":
        raise ValueError(f"device={str(dev)!r} is not supported by peak_memory; expected 'cpu' or 'cuda[:i]'")
    return _peak_cpu(fn, args, kwargs, modules, optimizers, tensors)


def format_bytes(n: int | float) -> str:
    """``n`` bytes as a short binary-prefixed string for tables: ``format_bytes(58_869_916) == '56.14 MiB'``."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        raise TypeError(f"format_bytes(n) needs a number of bytes, got {type(n).__name__}")
    sign, value = ("-" if n < 0 else ""), float(abs(n))
    if value < 1024:
        return f"{sign}{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{sign}{value:.2f} {unit}"
