"""Chunked PyTorch ops against the float64 quadratic reference: outputs, final states, every gradient."""

from __future__ import annotations

import pytest
import torch

from hf_effi.kernels.linear_attn import chunk as C
from hf_effi.kernels.linear_attn import reference as R

B, H, D, FD = 2, 3, 8, 6

# name -> (positional inputs, kwargs); every op in chunk.py with the settings that exercise its branches
OPS = {
    "causal_linear": (("fq", "fk", "v"), {}),
    "causal_linear_unnormalized": (("fq", "fk", "v"), {"normalize": False}),
    "noncausal_linear": (("fq", "fk", "v"), {}),
    "hybrid_w1": (("q", "k", "v", "fq", "fk", "gamma"), {"window": 1}),
    "hybrid_w5": (("q", "k", "v", "fq", "fk", "gamma"), {"window": 5, "scale": 0.4}),
    "hybrid_w24": (("q", "k", "v", "fq", "fk", "gamma"), {"window": 24}),
    "hybrid_w1_sinks2": (("q", "k", "v", "fq", "fk", "gamma"), {"window": 1, "sinks": 2}),
    "hybrid_w5_sinks3": (("q", "k", "v", "fq", "fk", "gamma"), {"window": 5, "scale": 0.4, "sinks": 3}),
    "gated": (("fq", "fk", "v", "log_decay"), {"scale": 0.5}),
    "gated_normalized": (("fq", "fk", "v", "log_decay"), {"normalize": True}),
    "sliding_w5": (("q", "k", "v"), {"window": 5}),
}


def _fn(module, name):
    base = name.split("_w")[0].removesuffix("_unnormalized").removesuffix("_normalized")
    return getattr(module, {"causal_linear": "causal_linear_attention", "noncausal_linear":
                            "noncausal_linear_attention", "hybrid": "hybrid_window_attention",
                            "gated": "gated_linear_attention", "sliding": "sliding_window_attention"}[base])


def _inputs(T, dtype=torch.float64, seed=0, decay_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = {n: torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for n in ("q", "k", "v")}
    x.update({n: torch.rand(B, H, T, FD, generator=g, dtype=torch.float64) + 0.1 for n in ("fq", "fk")})
    x["log_decay"] = -decay_scale * torch.rand(B, H, T, FD, generator=g, dtype=torch.float64)
    x["gamma"] = torch.rand(H, generator=g, dtype=torch.float64) + 0.05
    return {n: t.to(dtype) for n, t in x.items()}


def _mask(T, pad):
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, :pad] = False
    return mask


def _run(fn, x, names, kw, grad, **extra):
    """Forward (and backward of a loss over outputs and final state); returns tensors to compare by name."""
    args = [x[n].detach().clone().requires_grad_(grad) for n in names]
    o, state = fn(*args, **kw, **extra)
    out = {"o": o, **{f"state.{f}": t for f, t in zip(state._fields, state) if t is not None}}
    if grad:
        weight = torch.linspace(-1, 1, o.shape[-1], dtype=o.dtype)
        loss = (o.double() * weight.double()).sum()
        loss = loss + sum((t.double() ** 2).sum() for t in state if t is not None and t.is_floating_point())
        out.update({f"d{n}": g for n, g in zip(names, torch.autograd.grad(loss, args))})
    return out


def _assert_close(got, want, atol, rtol):
    assert got.keys() == want.keys()
    for name in want:
        a, b = got[name], want[name]
        if b.dtype == torch.bool:
            assert torch.equal(a, b), name
            continue
        assert torch.isfinite(a).all(), f"{name} has NaN/inf"
        torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize(("T", "chunk_size", "pad"), [(1, 64, 0), (7, 16, 3), (45, 16, 5), (64, 32, 0)],
                         ids=["T1", "T7-lt-window", "T45-odd", "T64-exact"])
def test_matches_reference_fp64_forward_backward_state(name, T, chunk_size, pad):
    names, kw = OPS[name]
    x = _inputs(T)
    mask = _mask(T, pad) if pad else None
    want = _run(_fn(R, name), x, names, kw, grad=True, attention_mask=mask)
    got = _run(_fn(C, name), x, names, kw, grad=True, attention_mask=mask, chunk_size=chunk_size)
    _assert_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", list(OPS))
def test_matches_reference_fp32(name):
    names, kw = OPS[name]
    x = _inputs(37)
    want = _run(_fn(R, name), x, names, kw, grad=True)
    got = _run(_fn(C, name), {n: t.float() for n, t in x.items()}, names, kw, grad=True, chunk_size=16)
    _assert_close(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["causal_linear", "hybrid_w5", "gated_normalized", "sliding_w5"])
def test_half_precision_inputs(name, dtype):
    """Half inputs are upcast inside; only the final rounding to v's dtype separates us from fp64 on those inputs."""
    names, kw = OPS[name]
    x = _inputs(29, dtype=dtype)
    want = _run(_fn(R, name), {n: t.double() for n, t in x.items()}, names, kw, grad=False)
    got = _run(_fn(C, name), x, names, kw, grad=False, chunk_size=16)
    assert got["o"].dtype == dtype
    _assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", list(OPS))
def test_two_halves_with_initial_state_equal_whole(name):
    names, kw = OPS[name]
    if name.startswith("noncausal"):
        pytest.skip("non-causal: a second half's queries do not see the first half's keys by design")
    T, cut = 41, 19
    x = _inputs(T)
    args = [x[n] for n in names]
    seq = [a.dim() == 4 for a in args]
    fn = _fn(C, name)
    o_whole, s_whole = fn(*args, **kw, chunk_size=8)
    o1, s1 = fn(*[a[:, :, :cut] if s else a for a, s in zip(args, seq)], **kw, chunk_size=8)
    o2, s2 = fn(*[a[:, :, cut:] if s else a for a, s in zip(args, seq)], **kw, chunk_size=8, initial_state=s1)
    torch.testing.assert_close(torch.cat([o1, o2], 2), o_whole)
    for field, a, b in zip(s_whole._fields, s2, s_whole):
        if a is not None:
            torch.testing.assert_close(a, b, msg=field)


@pytest.mark.parametrize("name", ["causal_linear", "hybrid_w5", "hybrid_w5_sinks3", "gated_normalized",
                                  "sliding_w5"])
def test_gradient_flows_into_initial_state(name):
    """Backward through ``initial_state`` (dh0) matches the reference. The history comes from other tokens: a
    repeated key would tie a sink's score with a window score, where the row max has no gradient."""
    names, kw = OPS[name]
    x, history = _inputs(21), _inputs(9, seed=1)
    args = [x[n] for n in names]
    prefix = [history[n] if x[n].dim() == 4 else x[n] for n in names]
    _, state = _fn(R, name)(*prefix, **kw)
    grads = []
    for module, extra in ((R, {}), (C, {"chunk_size": 8})):
        st = type(state)(*(t if t is None else t.detach().clone().requires_grad_(t.is_floating_point())
                           for t in state))
        o, _ = _fn(module, name)(*args, **kw, initial_state=st, **extra)
        leaves = [t for t in st if t is not None and t.requires_grad]
        grads.append(torch.autograd.grad(o.pow(2).sum(), leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("decay", [5.0, 60.0])
def test_gated_strong_decay_is_stable(decay):
    """log_decay down to −5 (and −60) per step over 64-token chunks: e^{−320} must underflow, never overflow."""
    x = _inputs(150, dtype=torch.float32, decay_scale=decay)
    names, kw = OPS["gated_normalized"]
    want = _run(R.gated_linear_attention, {n: t.double() for n, t in x.items()}, names, kw, grad=True)
    got = _run(C.gated_linear_attention, x, names, kw, grad=True, chunk_size=64)
    _assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_decode_steps_are_the_reference_steps():
    assert C.hybrid_window_attention_step is R.hybrid_window_attention_step
    assert C.gated_linear_attention_step is R.gated_linear_attention_step


def test_chunked_hybrid_prefill_then_steps_match_the_whole_sequence():
    x = _inputs(30)
    args = [x[n] for n in ("q", "k", "v", "fq", "fk")]
    o_whole, s_whole = C.hybrid_window_attention(*args, x["gamma"], window=4, chunk_size=8)
    _, state = C.hybrid_window_attention(*[a[:, :, :20] for a in args], x["gamma"], window=4, chunk_size=8)
    outs = []
    for t in range(20, 30):
        o, state = C.hybrid_window_attention_step(*[a[:, :, t:t + 1] for a in args], x["gamma"], state, window=4)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), o_whole[:, :, 20:])
    torch.testing.assert_close(state.kv, s_whole.kv)
