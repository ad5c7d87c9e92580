"""The Triton linear-attention kernels, run by the Triton interpreter on CPU, against the plain PyTorch reference.

Every kernel output is allocated NaN-filled (``_triton_functions.empty`` is swapped), so an element a kernel forgot
to write shows up as NaN. Shapes are small and odd (T = 37 with 16-wide chunks, Dk = 20, Dv = 24) so grids stay
around a dozen programs; fp32 and fp16 only (the interpreter mis-computes bf16, see shared/notes/kernels.md §2.1).
Gradients come from (o·do).sum() + (state·dstate).sum(), so the final-state path is differentiated too.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (tests/conftest.py sets it without CUDA)",
                allow_module_level=True)

from hf_effi.kernels.linear_attn import _triton_functions as fn  # noqa: E402
from hf_effi.kernels.linear_attn import reference as ref  # noqa: E402
from hf_effi.kernels.linear_attn import triton as tri  # noqa: E402

pytestmark = pytest.mark.slow

B, H, DK, DV, F = 2, 2, 20, 24, 24
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}  # RMS(err) / RMS(reference)


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    def nan_empty(*shape, dtype, device):
        out = torch.empty(*shape, dtype=dtype, device=device)
        return out.fill_(float("nan")) if out.is_floating_point() else out.fill_(-7)

    monkeypatch.setattr(fn, "empty", nan_empty)


def assert_close(name: str, expected: torch.Tensor, got: torch.Tensor, ratio: float) -> None:
    assert got.shape == expected.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten output?)"
    diff = (got.double() - expected.double())
    err = diff.pow(2).mean().sqrt() / expected.double().pow(2).mean().sqrt().clamp_min(1e-30)
    assert err <= ratio or diff.abs().max() <= 1e-6, f"{name}: rms ratio {err:.2e} > {ratio:.0e}, max {diff.abs().max():.2e}"


def _leaves(*tensors):
    return [t.detach().requires_grad_() if t is not None and t.is_floating_point() else t for t in tensors]


def _state_leaves(state):
    return None if state is None else type(state)(*_leaves(*state))


def _grad_inputs(args, state):
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return tensors + ([t for t in state if t is not None and t.requires_grad] if state is not None else [])


def _loss(o, state, seed=1):
    gen = torch.Generator().manual_seed(seed)
    loss = (o.float() * torch.randn(o.shape, generator=gen)).sum()
    for t in (state.kv, state.k_sum):
        if t is not None:
            loss = loss + (t.float() * torch.randn(t.shape, generator=gen)).sum()
    return loss


def _check_op(op, args, kwargs, state, dtype, triton_kwargs):
    """Forward, final state and every gradient of tri.<op> against ref.<op> (run in fp32 on the same rounded inputs)."""
    tol = TOL[dtype]
    args_t = _leaves(*[a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args])
    state_t = _state_leaves(state)
    o, final = getattr(tri, op)(*args_t, **kwargs, initial_state=state_t, **triton_kwargs)
    assert o.dtype == dtype and final.kv.dtype == torch.float32
    grads = torch.autograd.grad(_loss(o, final), _grad_inputs(args_t, state_t))
    args_r = _leaves(*[a.detach().float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                       for a in args_t])
    state_r = _state_leaves(state)
    o_r, final_r = getattr(ref, op)(*args_r, **kwargs, initial_state=state_r)
    grads_r = torch.autograd.grad(_loss(o_r, final_r), _grad_inputs(args_r, state_r))
    assert_close("o", o_r, o, tol)
    for name, got, exp in zip(final._fields, final, final_r):
        if exp is None:
            assert got is None, name
        elif exp.dtype == torch.bool:
            assert torch.equal(got, exp), name
        else:
            assert_close(f"state.{name}", exp, got, tol)
    for i, (g, g_r) in enumerate(zip(grads, grads_r)):
        assert_close(f"grad[{i}]", g_r, g, tol * 5)


def _mask(T):
    m = torch.ones(B, T, dtype=torch.bool)
    m[0, :5] = False  # left padding (all of row 0 when T <= 5)
    m[1, max(T - 3, 0) : T - 1] = False  # a hole inside the last window
    return m


def _qkv(T, positive=True):
    q, k = (torch.rand if positive else torch.randn)(B, H, T, DK), (torch.rand if positive else torch.randn)(B, H, T, DK)
    return q, k, torch.randn(B, H, T, DV)


def _linear_state(normalize):
    return ref.LinearAttentionState(torch.randn(B, H, DK, DV), torch.rand(B, H, DK) if normalize else None)


def _hybrid_state(window):
    mask = torch.ones(B, window, dtype=torch.bool)
    mask[0, : window // 2] = False
    return ref.HybridAttentionState(torch.rand(B, H, F, DV), torch.rand(B, H, F), torch.randn(B, H, window, DK),
                                    torch.rand(B, H, window, F), torch.randn(B, H, window, DV), mask)


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("T", "normalize", "with_state", "masked"), [
    pytest.param(37, True, True, False, id="T37-norm-state"),
    pytest.param(37, False, False, True, id="T37-mask"),
    pytest.param(1, True, False, False, id="T1"),
])
def test_causal_linear_attention(dtype, T, normalize, with_state, masked):
    q, k, v = _qkv(T)
    state = _linear_state(normalize) if with_state else None
    _check_op("causal_linear_attention", (q, k, v), dict(normalize=normalize, attention_mask=_mask(T) if masked else None),
              state, dtype, dict(chunk_size=16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("T", "normalize", "with_state", "masked"), [
    pytest.param(37, False, True, False, id="T37-state"),
    pytest.param(37, True, False, True, id="T37-norm-mask"),
    pytest.param(1, False, True, False, id="T1-state"),
])
def test_gated_linear_attention(dtype, T, normalize, with_state, masked):
    q, k, v = _qkv(T)
    log_decay = -torch.rand(B, H, T, DK)
    state = _linear_state(normalize) if with_state else None
    _check_op("gated_linear_attention", (q, k, v, log_decay),
              dict(scale=0.5, normalize=normalize, attention_mask=_mask(T) if masked else None), state, dtype,
              dict(chunk_size=16))


def test_gated_linear_attention_strong_decay_stays_finite():
    """Log-decays of −30 per step overflow a factorised exp(−cumsum) within one chunk; the kernel must not."""
    q, k, v = _qkv(33)
    log_decay = -30 * torch.rand(B, H, 33, DK)
    _check_op("gated_linear_attention", (q, k, v, log_decay), dict(), None, torch.float32, dict(chunk_size=16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("T", "window", "with_state", "masked"), [
    pytest.param(37, 8, True, True, id="T37-W8-state-mask"),
    pytest.param(37, 8, False, False, id="T37-W8"),
    pytest.param(5, 8, True, True, id="T5<W8-state-mask"),
    pytest.param(1, 3, True, False, id="T1-W3-state"),
])
def test_hybrid_window_attention(dtype, T, window, with_state, masked):
    q, k, v = _qkv(T, positive=False)
    fq, fk = torch.rand(B, H, T, F), torch.rand(B, H, T, F)
    gamma = torch.rand(H)
    state = _hybrid_state(window) if with_state else None
    _check_op("hybrid_window_attention", (q, k, v, fq, fk, gamma),
              dict(window=window, attention_mask=_mask(T) if masked else None), state, dtype, dict(chunk_size=16))


def _split_equals_whole(op, args, kwargs, t_split):
    whole, whole_state = getattr(ref, op)(*args, **kwargs)
    first = [a[:, :, :t_split] if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args]
    second = [a[:, :, t_split:] if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args]
    o1, s1 = getattr(tri, op)(*first, **kwargs, chunk_size=16)
    o2, s2 = getattr(tri, op)(*second, **kwargs, initial_state=s1, chunk_size=16)
    assert_close("o", whole, torch.cat([o1, o2], 2), 1e-5)
    for name, got, exp in zip(whole_state._fields, s2, whole_state):
        if exp is not None and exp.is_floating_point():
            assert_close(f"state.{name}", exp, got, 1e-5)


def test_initial_state_continues_a_sequence():
    """Processing a sequence in two halves (the second from the first's final state) equals processing it whole."""
    q, k, v = _qkv(41)
    _split_equals_whole("causal_linear_attention", (q, k, v), dict(), 19)
    _split_equals_whole("gated_linear_attention", (q, k, v, -torch.rand(B, H, 41, DK)), dict(normalize=True), 23)
    qs, ks, _ = _qkv(41, positive=False)
    fq, fk = torch.rand(B, H, 41, F), torch.rand(B, H, 41, F)
    _split_equals_whole("hybrid_window_attention", (qs, ks, v, fq, fk, torch.rand(H)), dict(window=6), 17)


def _run_steps(step, args, kwargs, n):
    outs, state = [], None
    for t in range(n):
        token = [a[:, :, t : t + 1] if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args]
        o, state = step(*token, state, **kwargs)
        outs.append(o)
    return torch.cat(outs, 2), state


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_steps_match_full_sequence(dtype):
    T = 11
    q, k, v = _qkv(T)
    log_decay = -torch.rand(B, H, T, DK)
    qs, ks, _ = _qkv(T, positive=False)
    fq, fk, gamma = torch.rand(B, H, T, F), torch.rand(B, H, T, F), torch.rand(H)
    cases = [
        ("causal_linear_attention", (q, k, v), dict(normalize=True)),
        ("causal_linear_attention", (q, k, v), dict(normalize=False)),
        ("gated_linear_attention", (q, k, v, log_decay), dict(scale=0.5, normalize=True)),
        ("hybrid_window_attention", (qs, ks, v, fq, fk, gamma), dict(window=4)),
    ]
    tol = TOL[dtype]
    with torch.no_grad():
        for op, args, kwargs in cases:
            cast = [a.to(dtype) if a.dim() == 4 else a for a in args]
            o_r, s_r = getattr(ref, op)(*[a.float() for a in cast], **kwargs)
            o, s = _run_steps(getattr(tri, op + "_step"), cast, kwargs, T)
            assert o.dtype == dtype
            assert_close(f"{op} o", o_r, o, tol)
            for name, got, exp in zip(s_r._fields, s, s_r):
                if exp is not None and exp.is_floating_point():
                    assert_close(f"{op} state.{name}", exp, got, tol)


def test_bad_input_is_refused_with_a_clear_error():
    q, k, v = _qkv(4)
    with pytest.raises(ValueError, match="chunk_size"):
        tri.causal_linear_attention(q, k, v, chunk_size=24)
    with pytest.raises(ValueError, match="attention_mask"):
        tri.causal_linear_attention(q, k, v, attention_mask=torch.ones(B, 5))
    with pytest.raises(ValueError, match="T = 1"):
        tri.causal_linear_attention_step(q, k, v, None)
    with pytest.raises(RuntimeError, match="no_grad"):
        tri.causal_linear_attention_step(q[:, :, :1].requires_grad_(), k[:, :, :1], v[:, :, :1], None)
    with pytest.raises(ValueError, match="window_weight"):
        tri.hybrid_window_attention(q, k, v, q, k, torch.ones(H + 1), window=2)


def test_hybrid_with_window_covering_the_sequence_is_causal_softmax():
    q, k, v = _qkv(20, positive=False)
    fq = torch.rand(B, H, 20, F)
    o, _ = tri.hybrid_window_attention(q, k, v, fq, fq, torch.ones(H), window=32, chunk_size=16)
    assert_close("o", torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), o, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_step_from_a_given_state_matches_reference_step(dtype):
    """One step from a random state whose oldest window slots are empty: masked slots must not enter the sums."""
    q, k, v = (t.to(dtype) for t in _qkv(1))
    qs, ks = (t.to(dtype) for t in _qkv(1, positive=False)[:2])
    fq, fk = torch.rand(B, H, 1, F).to(dtype), torch.rand(B, H, 1, F).to(dtype)
    log_decay = -torch.rand(B, H, 1, DK).to(dtype)
    window = 6
    hybrid = _hybrid_state(window)
    hybrid = hybrid._replace(window_k=hybrid.window_k.to(dtype), window_fk=hybrid.window_fk.to(dtype),
                             window_v=hybrid.window_v.to(dtype))
    cases = [
        ("causal_linear_attention_step", (q, k, v, _linear_state(True)), dict(normalize=True)),
        ("gated_linear_attention_step", (q, k, v, log_decay, _linear_state(False)), dict(scale=0.3)),
        ("hybrid_window_attention_step", (qs, ks, v, fq, fk, torch.rand(H), hybrid), dict(window=window)),
    ]
    with torch.no_grad():
        for op, args, kwargs in cases:
            o, s = getattr(tri, op)(*args, **kwargs)
            up = [a.float() if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args]
            o_r, s_r = getattr(ref, op)(*up, **kwargs)
            assert o.dtype == dtype
            assert_close(f"{op} o", o_r, o, TOL[dtype])
            for name, got, exp in zip(s_r._fields, s, s_r):
                if exp is None:
                    assert got is None, name
                elif exp.dtype == torch.bool:
                    assert torch.equal(got, exp), name
                else:
                    assert_close(f"{op} state.{name}", exp, got, TOL[dtype])


def test_forward_matches_the_token_by_token_reference():
    """The quadratic reference is checked against the recurrent one elsewhere; this pins the kernels to both."""
    T, mask = 37, _mask(37)
    q, k, v = _qkv(T)
    qs, ks, _ = _qkv(T, positive=False)
    cases = [
        ("causal_linear_attention", (q, k, v), dict(normalize=True), _linear_state(True)),
        ("gated_linear_attention", (q, k, v, -torch.rand(B, H, T, DK)), dict(scale=0.5), _linear_state(False)),
        ("hybrid_window_attention", (qs, ks, v, torch.rand(B, H, T, F), torch.rand(B, H, T, F), torch.rand(H)),
         dict(window=8), _hybrid_state(8)),
    ]
    with torch.no_grad():
        for op, args, kwargs, state in cases:
            o, s = getattr(tri, op)(*args, **kwargs, initial_state=state, attention_mask=mask, chunk_size=16)
            o_r, s_r = getattr(ref, op + "_recurrent")(*args, **kwargs, initial_state=state, attention_mask=mask)
            assert_close(f"{op} o", o_r, o, 1e-5)
            assert_close(f"{op} kv", s_r.kv, s.kv, 1e-5)
