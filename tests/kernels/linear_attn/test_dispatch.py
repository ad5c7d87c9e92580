"""Backend dispatch (device, argument, environment) and the shared bad-input errors."""

from __future__ import annotations

import sys

import pytest
import torch

import hf_effi.kernels.linear_attn as L
from hf_effi.kernels.linear_attn import chunk as C
from hf_effi.kernels.linear_attn import reference as R

TRITON_MODULE = "hf_effi.kernels.linear_attn.triton"
B, H, T, D = 2, 2, 9, 4


def _x(T=T, D=D, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, H, T, D, generator=g, dtype=dtype) + 0.1


def _calls():
    """Every dispatching op once, on CPU tensors (full-sequence ops and decode steps)."""
    x, one = _x(), _x(T=1)
    gamma = torch.full((H,), 0.3)
    return {
        "causal_linear_attention": lambda **b: L.causal_linear_attention(x, x, x, **b),
        "noncausal_linear_attention": lambda **b: L.noncausal_linear_attention(x, x, x, **b),
        "gated_linear_attention": lambda **b: L.gated_linear_attention(x, x, x, -x, **b),
        "hybrid_window_attention": lambda **b: L.hybrid_window_attention(x, x, x, x, x, gamma, window=3, **b),
        "sliding_window_attention": lambda **b: L.sliding_window_attention(x, x, x, window=3, **b),
        "causal_linear_attention_step": lambda **b: L.causal_linear_attention_step(one, one, one, None, **b),
        "gated_linear_attention_step": lambda **b: L.gated_linear_attention_step(one, one, one, -one, None, **b),
        "hybrid_window_attention_step": lambda **b: L.hybrid_window_attention_step(
            one, one, one, one, one, gamma, None, window=3, **b),
        "sliding_window_attention_step": lambda **b: L.sliding_window_attention_step(one, one, one, None, window=3,
                                                                                     **b),
    }


def test_cpu_default_is_chunk_and_never_imports_triton(monkeypatch):
    monkeypatch.delenv(L.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even with the interpreter available, CPU never picks it
    monkeypatch.delitem(sys.modules, TRITON_MODULE, raising=False)
    x = _x()
    for op, call in _calls().items():
        assert L.resolve_backend(op, x) == "chunk", op
        call()
    assert TRITON_MODULE not in sys.modules


@pytest.mark.parametrize("op", ["causal_linear_attention", "hybrid_window_attention", "gated_linear_attention",
                                "sliding_window_attention", "noncausal_linear_attention"])
@pytest.mark.parametrize("backend", ["reference", "chunk"])
def test_explicit_backend_runs_that_implementation(op, backend):
    o, _ = _calls()[op](backend=backend)
    module = R if backend == "reference" else C
    x, gamma = _x(), torch.full((H,), 0.3)
    args = {"gated_linear_attention": (x, x, x, -x), "hybrid_window_attention": (x, x, x, x, x, gamma)}.get(
        op, (x, x, x))
    kwargs = {"window": 3} if "window" in op else {}
    torch.testing.assert_close(o, getattr(module, op)(*args, **kwargs)[0], atol=0, rtol=0)


def test_env_preference_and_fallback(monkeypatch):
    x = _x()
    monkeypatch.setenv(L.ENV_VAR, "reference")
    assert L.resolve_backend("hybrid_window_attention", x) == "reference"
    assert L.resolve_backend("hybrid_window_attention", x, "chunk") == "chunk"  # the argument wins
    monkeypatch.setenv(L.ENV_VAR, "fla")  # fla has no hybrid and no CPU: falls back to the device default
    assert L.resolve_backend("hybrid_window_attention", x) == "chunk"
    assert L.resolve_backend("causal_linear_attention", x) == "chunk"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(L.ENV_VAR, "triton")
    assert L.resolve_backend("causal_linear_attention", x) == "chunk"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # both set by the user: the interpreter was asked for
    assert L.resolve_backend("causal_linear_attention", x) == "triton"
    assert L.resolve_backend("sliding_window_attention", x) == "chunk"  # no triton op: falls back
    monkeypatch.setenv(L.ENV_VAR, "trtion")
    with pytest.raises(ValueError, match=r"HF_EFFI_LINEAR_ATTN_BACKEND='trtion'.*did you mean 'triton'"):
        L.resolve_backend("causal_linear_attention", x)


def test_explicit_backend_errors(monkeypatch):
    x = _x()
    with pytest.raises(ValueError, match=r"backend='chnk'.*did you mean 'chunk'.*reference"):
        L.causal_linear_attention(x, x, x, backend="chnk")
    with pytest.raises(ValueError, match=r"backend='fla' has no hybrid_window_attention; backends with it"):
        L.resolve_backend("hybrid_window_attention", x, "fla")
    with pytest.raises(ValueError, match=r"backend='fla' needs CUDA tensors, got cpu"):
        L.causal_linear_attention(x, x, x, backend="fla")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors.*TRITON_INTERPRET=1"):
        L.resolve_backend("causal_linear_attention", x, "triton")


def test_a_step_that_needs_grad_is_noted():
    one = _x(T=1).requires_grad_()
    assert L._step_needs_grad(one, None) and not L._step_needs_grad(one.detach(), None)
    with torch.no_grad():
        assert not L._step_needs_grad(one)


def _bad_inputs():
    x, x3, gamma = _x(), _x(T=3), torch.full((H,), 0.3)
    mask_ok = torch.ones(B, T, dtype=torch.bool)
    ones = torch.ones
    lin_state = L.LinearAttentionState(ones(B, H, D, D), None)
    return [
        ("3-D q", lambda: L.causal_linear_attention(x[0], x[0], x[0]), r"q must be 4-D \[B, H, T, D\]"),
        ("k shape", lambda: L.causal_linear_attention(x, x[:, :1], x), r"k must have q's shape"),
        ("v length", lambda: L.causal_linear_attention(x, x, x3), r"v must be \[B, H, T, Dv\]"),
        ("dtype", lambda: L.causal_linear_attention(x, x.double(), x), r"k has dtype torch.float64 but q has"),
        ("int dtype", lambda: L.causal_linear_attention(x.long(), x.long(), x.long()), r"floating-point"),
        ("device", lambda: L.causal_linear_attention(x, x.to("meta"), x), r"k is on meta but q is on cpu"),
        ("mask shape", lambda: L.causal_linear_attention(x, x, x, attention_mask=mask_ok[:, :4]),
         r"attention_mask must be \[B, T\] = \(2, 9\)"),
        ("4-D mask", lambda: L.sliding_window_attention(x, x, x, window=2, attention_mask=mask_ok[:, None, None]),
         r"attention_mask must be \[B, T\]"),
        ("window 0", lambda: L.hybrid_window_attention(x, x, x, x, x, gamma, window=0), r"window must be an int >= 1"),
        ("window float", lambda: L.sliding_window_attention(x, x, x, window=2.5), r"window must be an int >= 1"),
        ("window weight", lambda: L.hybrid_window_attention(x, x, x, x, x, gamma[:1], window=2),
         r"window_weight must be \[H\] = \(2,\)"),
        ("fk shape", lambda: L.hybrid_window_attention(x, x, x, x, x[..., :2], gamma, window=2),
         r"fk must have fq's shape"),
        ("log_decay", lambda: L.gated_linear_attention(x, x, x, x[..., :2]), r"log_decay must have q's shape"),
        ("chunk size", lambda: C.causal_linear_attention(x, x, x, chunk_size=48), r"chunk_size must be a power of two"),
        ("chunk size 0", lambda: C.gated_linear_attention(x, x, x, -x, chunk_size=0), r"power of two"),
        ("k_sum missing", lambda: L.causal_linear_attention(x, x, x, initial_state=lin_state),
         r"normalize=True needs initial_state.k_sum"),
        ("state shape", lambda: L.causal_linear_attention(x, x, x, normalize=False,
                                                          initial_state=L.LinearAttentionState(ones(B, H, D, 3), None)),
         r"initial_state.kv must have shape \(2, 2, 4, 4\)"),
        ("state type", lambda: L.causal_linear_attention(x, x, x, initial_state=ones(3)), r"NamedTuple with fields"),
        ("window state", lambda: L.sliding_window_attention(x, x, x, window=4,
                                                            initial_state=R.sliding_window_attention(x, x, x, window=3)[1]),
         r"initial_state.window_k must have shape \(2, 2, 4, 4\)"),
        ("step T", lambda: L.causal_linear_attention_step(x, x, x, None), r"a decode step takes T = 1"),
        ("eps", lambda: L.causal_linear_attention(x, x, x, eps=-1.0), r"eps must be a float >= 0"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
@pytest.mark.parametrize("backend", ["reference", "chunk"])
def test_bad_input_gets_one_clear_error(case, backend, monkeypatch):
    """Every backend validates through the one helper in ``_checks.py``, so each rejects the same input alike."""
    name, call, match = case
    if name.startswith("chunk size") and backend == "reference":
        pytest.skip("chunk_size is a chunk-backend argument")
    monkeypatch.setenv(L.ENV_VAR, backend)
    with pytest.raises(ValueError, match=match):
        call()
