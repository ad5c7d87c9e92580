"""One validation helper per linear-attention op, shared by every backend (reference, chunk, triton).

Each check raises ``ValueError`` with one line that names the argument, what it got, what it needs and the fix,
so the reference and the fast paths reject exactly the same inputs. States are checked by their fields (duck
typing), so this module does not import the state NamedTuples and can be imported by every backend.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "check_causal_linear",
    "check_chunk_size",
    "check_gated",
    "check_hybrid",
    "check_noncausal_linear",
    "check_sinks",
    "check_sliding_window",
    "check_step",
    "check_window",
    "real_positions",
]


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_tensor(name: str, t: Any, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}; cast it with .float()")


def _check_qkv(q: Any, k: Any, v: Any, op: str) -> None:
    """q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; one dtype, one device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, op)
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D [B, H, T, D], got shape {_shape(t)}; transpose [B, T, H, D] "
                             "inputs with .transpose(1, 2)")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have q's shape {_shape(q)}, got {_shape(k)}; repeat KV heads to q's head count")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: v must be [B, H, T, Dv] with q's B, H, T = {_shape(q)[:3]}, got {_shape(v)}")
    if q.shape[2] < 1:
        raise ValueError(f"{op}: the sequence length T must be at least 1, got q of shape {_shape(q)}")
    _same_dtype_device(op, q=q, k=k, v=v)


def _same_dtype_device(op: str, **tensors: torch.Tensor) -> None:
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.dtype != first.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype} but {first_name} has {first.dtype}; cast them to one "
                             "dtype")
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}; move them to one "
                             "device")


def _check_mask(attention_mask: Any, q: torch.Tensor, op: str) -> None:
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"{op}: attention_mask must be a [B, T] tensor or None, got {type(attention_mask).__name__}")
    want = (q.shape[0], q.shape[2])
    if _shape(attention_mask) != want:
        raise ValueError(f"{op}: attention_mask must be [B, T] = {want} (1 = real token, 0 = padding), got "
                         f"{_shape(attention_mask)}; a 4-D HF mask is not accepted, pass the 2-D padding mask")
    if attention_mask.device != q.device:
        raise ValueError(f"{op}: attention_mask is on {attention_mask.device} but q is on {q.device}; move it")


def real_positions(attention_mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """The padding mask as bool ``[B, T]`` (True = real token); all True when ``attention_mask`` is None."""
    if attention_mask is None:
        return torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
    return attention_mask != 0


def check_window(window: Any, op: str) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"{op}: window must be an int >= 1 (the number of most recent tokens under softmax), got "
                         f"{window!r}")


def check_chunk_size(chunk_size: Any, op: str = "chunk") -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"{op}: chunk_size must be a power of two (e.g. 64), got {chunk_size!r}")


def _check_eps(eps: Any, op: str) -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"{op}: eps must be a float >= 0, got {eps!r}")


def _check_field(op: str, name: str, t: Any, shape: tuple[int, ...], device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a tensor of shape {shape}, got {type(t).__name__}")
    if _shape(t) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {_shape(t)}; was the state made for other "
                         "inputs (batch, heads, dims, window)?")
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the inputs are on {device}; move the state")


def _check_state_fields(op: str, state: Any, name: str, fields: tuple[str, ...]) -> None:
    if not isinstance(state, tuple) or any(not hasattr(state, f) for f in fields):
        raise ValueError(f"{op}: {name} must be a NamedTuple with fields {fields}, got {type(state).__name__}")


def _check_linear_state(op: str, state: Any, name: str, B: int, H: int, Dk: int, Dv: int, normalize: bool,
                        device: torch.device) -> None:
    if state is None:
        return
    _check_state_fields(op, state, name, ("kv", "k_sum"))
    _check_field(op, f"{name}.kv", state.kv, (B, H, Dk, Dv), device)
    if normalize:
        if state.k_sum is None:
            raise ValueError(f"{op}: normalize=True needs {name}.k_sum, got None (the state was made with "
                             "normalize=False); pass normalize=False or a normalised state")
        _check_field(op, f"{name}.k_sum", state.k_sum, (B, H, Dk), device)


def _check_window_state(op: str, state: Any, name: str, B: int, H: int, window: int, shapes: dict[str, int],
                        device: torch.device) -> None:
    _check_state_fields(op, state, name, (*shapes, "window_mask"))
    for field, dim in shapes.items():
        _check_field(op, f"{name}.{field}", getattr(state, field), (B, H, window, dim), device)
    _check_field(op, f"{name}.window_mask", state.window_mask, (B, window), device)


def check_causal_linear(q: Any, k: Any, v: Any, *, eps: Any, normalize: bool, initial_state: Any,
                        attention_mask: Any, op: str = "causal_linear_attention") -> None:
    _check_qkv(q, k, v, op)
    _check_eps(eps, op)
    _check_mask(attention_mask, q, op)
    B, H, _, Dk = q.shape
    _check_linear_state(op, initial_state, "initial_state", B, H, Dk, v.shape[-1], normalize, q.device)


def check_noncausal_linear(q: Any, k: Any, v: Any, *, eps: Any, normalize: bool, initial_state: Any,
                           attention_mask: Any) -> None:
    check_causal_linear(q, k, v, eps=eps, normalize=normalize, initial_state=initial_state,
                        attention_mask=attention_mask, op="noncausal_linear_attention")


def check_gated(q: Any, k: Any, v: Any, log_decay: Any, *, eps: Any, normalize: bool, initial_state: Any,
                attention_mask: Any, op: str = "gated_linear_attention") -> None:
    check_causal_linear(q, k, v, eps=eps, normalize=normalize, initial_state=initial_state,
                        attention_mask=attention_mask, op=op)
    _check_tensor("log_decay", log_decay, op)
    if log_decay.shape != q.shape:
        raise ValueError(f"{op}: log_decay must have q's shape {_shape(q)} (one log-decay per key dimension), got "
                         f"{_shape(log_decay)}")
    _same_dtype_device(op, q=q, log_decay=log_decay)


def check_sinks(sinks: Any, op: str) -> None:
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"{op}: sinks must be an int >= 0 (the first real tokens kept under softmax after they "
                         f"leave the window; 0 = none), got {sinks!r}")


def _check_sink_state(op: str, state: Any, name: str, B: int, H: int, sinks: int, D: int, Dv: int,
                      device: torch.device) -> None:
    if not sinks:
        if getattr(state, "sink_k", None) is not None:
            raise ValueError(f"{op}: {name} holds {state.sink_k.shape[2]} attention sinks but sinks=0; pass the "
                             "sinks the state was made with")
        return
    if getattr(state, "seen", None) is None:
        raise ValueError(f"{op}: sinks={sinks} needs {name}.sink_k/sink_v/sink_mask/seen, but the state was made "
                         "without sinks; start from initial_state=None or pass sinks=0")
    _check_field(op, f"{name}.sink_k", state.sink_k, (B, H, sinks, D), device)
    _check_field(op, f"{name}.sink_v", state.sink_v, (B, H, sinks, Dv), device)
    _check_field(op, f"{name}.sink_mask", state.sink_mask, (B, sinks), device)
    _check_field(op, f"{name}.seen", state.seen, (B,), device)


def check_hybrid(q: Any, k: Any, v: Any, fq: Any, fk: Any, window_weight: Any, *, window: Any, eps: Any,
                 initial_state: Any, attention_mask: Any, op: str = "hybrid_window_attention",
                 sinks: Any = 0) -> None:
    _check_qkv(q, k, v, op)
    check_window(window, op)
    check_sinks(sinks, op)
    _check_eps(eps, op)
    _check_mask(attention_mask, q, op)
    for name, t in (("fq", fq), ("fk", fk)):
        _check_tensor(name, t, op)
        if t.dim() != 4 or t.shape[:3] != q.shape[:3]:
            raise ValueError(f"{op}: {name} must be [B, H, T, F] with q's B, H, T = {_shape(q)[:3]}, got {_shape(t)}")
    if fk.shape != fq.shape:
        raise ValueError(f"{op}: fk must have fq's shape {_shape(fq)}, got {_shape(fk)}")
    _same_dtype_device(op, q=q, fq=fq, fk=fk)
    _check_tensor("window_weight", window_weight, op)
    if _shape(window_weight) != (q.shape[1],):
        raise ValueError(f"{op}: window_weight must be [H] = ({q.shape[1]},) (one weight per head, after sigmoid), "
                         f"got {_shape(window_weight)}")
    if window_weight.device != q.device:
        raise ValueError(f"{op}: window_weight is on {window_weight.device} but q is on {q.device}; move it")
    if initial_state is not None:
        B, H, _, D = q.shape
        F, Dv = fq.shape[-1], v.shape[-1]
        _check_linear_state(op, initial_state, "initial_state", B, H, F, Dv, True, q.device)
        _check_window_state(op, initial_state, "initial_state", B, H, window,
                            {"window_k": D, "window_fk": F, "window_v": Dv}, q.device)
        _check_sink_state(op, initial_state, "initial_state", B, H, sinks, D, Dv, q.device)


def check_sliding_window(q: Any, k: Any, v: Any, *, window: Any, initial_state: Any, attention_mask: Any,
                         op: str = "sliding_window_attention") -> None:
    _check_qkv(q, k, v, op)
    check_window(window, op)
    _check_mask(attention_mask, q, op)
    if initial_state is not None:
        B, H, _, D = q.shape
        _check_window_state(op, initial_state, "initial_state", B, H, window,
                            {"window_k": D, "window_v": v.shape[-1]}, q.device)


def check_step(q: Any, op: str) -> None:
    """Decode steps take one token: T = 1 (the full-sequence op handles prefill)."""
    if isinstance(q, torch.Tensor) and q.dim() == 4 and q.shape[2] != 1:
        raise ValueError(f"{op}: a decode step takes T = 1, got q of shape {_shape(q)}; use the full-sequence op "
                         "for a prompt")
