"""The compiled Triton linear-attention kernels on CUDA against the PyTorch reference: fp32 and bf16, real sizes.

Shapes are what models use (Dk = Dv = 64 or 128, LoLCATs window 64, F = 128) with T not a multiple of any chunk,
forward and every gradient, masks and carried state. bf16 inputs are compared with the reference run in fp32 on the
same rounded inputs; the tolerance is an RMS ratio (fla's ``assert_close`` rule).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOL = {torch.float32: 2e-4, torch.bfloat16: 2e-2}
DEV = "cuda"


def _modules():
    from hf_effi.kernels.linear_attn import _triton_functions as fn
    from hf_effi.kernels.linear_attn import reference as ref
    from hf_effi.kernels.linear_attn import triton as tri

    return fn, ref, tri


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    fn, _, _ = _modules()

    def nan_empty(*shape, dtype, device):
        out = torch.empty(*shape, dtype=dtype, device=device)
        return out.fill_(float("nan")) if out.is_floating_point() else out.fill_(-7)

    monkeypatch.setattr(fn, "empty", nan_empty)


def assert_close(name, expected, got, ratio):
    assert got.shape == expected.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    diff = got.double() - expected.double()
    err = diff.pow(2).mean().sqrt() / expected.double().pow(2).mean().sqrt().clamp_min(1e-30)
    assert err <= ratio or diff.abs().max() <= 1e-6, f"{name}: rms ratio {err:.2e} > {ratio:.0e}"


def _leaves(ts):
    return [t.detach().requires_grad_() if t is not None and t.is_floating_point() else t for t in ts]


def _loss(o, state):
    gen = torch.Generator(device=DEV).manual_seed(1)
    loss = (o.float() * torch.randn(o.shape, generator=gen, device=DEV)).sum()
    for t in (state.kv, state.k_sum):
        if t is not None:
            loss = loss + (t.float() * torch.randn(t.shape, generator=gen, device=DEV)).sum()
    return loss


def _check(op, args, kwargs, state, dtype):
    _, ref, tri = _modules()
    a_t = _leaves([a.to(dtype) if a.dim() == 4 else a for a in args])
    s_t = None if state is None else type(state)(*_leaves(state))
    o, fin = getattr(tri, op)(*a_t, **kwargs, initial_state=s_t)
    inputs_t = [a for a in a_t if a.requires_grad] + ([t for t in s_t if t is not None and t.requires_grad] if s_t else [])
    grads = torch.autograd.grad(_loss(o, fin), inputs_t)
    a_r = _leaves([a.detach().float() for a in a_t])
    s_r = None if state is None else type(state)(*_leaves(state))
    o_r, fin_r = getattr(ref, op)(*a_r, **kwargs, initial_state=s_r)
    inputs_r = [a for a in a_r if a.requires_grad] + ([t for t in s_r if t is not None and t.requires_grad] if s_r else [])
    grads_r = torch.autograd.grad(_loss(o_r, fin_r), inputs_r)
    tol = TOL[dtype]
    assert_close("o", o_r, o, tol)
    for name, got, exp in zip(fin._fields, fin, fin_r):
        if exp is not None and exp.is_floating_point():
            assert_close(f"state.{name}", exp, got, tol)
    for i, (g, g_r) in enumerate(zip(grads, grads_r)):
        assert_close(f"grad[{i}]", g_r, g, tol * 2)


def _mask(B, T):
    m = torch.ones(B, T, dtype=torch.bool, device=DEV)
    m[0, : T // 5] = False
    return m


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
SIZES = [pytest.param(2, 4, 1000, 64, id="B2-H4-T1000-D64"), pytest.param(1, 2, 777, 128, id="B1-H2-T777-D128")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "H", "T", "D"), SIZES)
@pytest.mark.parametrize("normalize", [True, False])
def test_causal_linear_attention_cuda(dtype, B, H, T, D, normalize):
    _, ref, _ = _modules()
    q, k = torch.rand(B, H, T, D, device=DEV) / D, torch.rand(B, H, T, D, device=DEV)
    v = torch.randn(B, H, T, D, device=DEV)
    state = ref.LinearAttentionState(torch.randn(B, H, D, D, device=DEV),
                                     torch.rand(B, H, D, device=DEV) if normalize else None)
    _check("causal_linear_attention", (q, k, v), dict(normalize=normalize, attention_mask=_mask(B, T)), state, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "H", "T", "D"), SIZES)
@pytest.mark.parametrize("decay_scale", [0.1, 20.0])
def test_gated_linear_attention_cuda(dtype, B, H, T, D, decay_scale):
    _, ref, _ = _modules()
    q, k, v = torch.randn(B, H, T, D, device=DEV), torch.randn(B, H, T, D, device=DEV), torch.randn(B, H, T, D, device=DEV)
    log_decay = -decay_scale * torch.rand(B, H, T, D, device=DEV)
    state = ref.LinearAttentionState(torch.randn(B, H, D, D, device=DEV), None)
    _check("gated_linear_attention", (q, k, v, log_decay), dict(scale=D**-0.5, attention_mask=_mask(B, T)), state, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "H", "T", "D"), SIZES)
def test_hybrid_window_attention_cuda(dtype, B, H, T, D):
    _, ref, _ = _modules()
    W, Fd = 64, 128
    q, k, v = (torch.randn(B, H, T, D, device=DEV) for _ in range(3))
    fq, fk = torch.rand(B, H, T, Fd, device=DEV) / Fd, torch.rand(B, H, T, Fd, device=DEV)
    gamma = torch.rand(H, device=DEV)
    wm = torch.ones(B, W, dtype=torch.bool, device=DEV)
    wm[0, :10] = False
    state = ref.HybridAttentionState(torch.rand(B, H, Fd, D, device=DEV), torch.rand(B, H, Fd, device=DEV),
                                     torch.randn(B, H, W, D, device=DEV).to(dtype),
                                     torch.rand(B, H, W, Fd, device=DEV).to(dtype),
                                     torch.randn(B, H, W, D, device=DEV).to(dtype), wm)
    _check("hybrid_window_attention", (q, k, v, fq, fk, gamma), dict(window=W, attention_mask=_mask(B, T)), state,
           dtype)


def test_hybrid_with_full_window_is_causal_softmax_cuda():
    _, _, tri = _modules()
    B, H, T, D = 2, 4, 300, 64
    q, k, v = (torch.randn(B, H, T, D, device=DEV) for _ in range(3))
    fq = torch.rand(B, H, T, 32, device=DEV)
    o, _ = tri.hybrid_window_attention(q, k, v, fq, fq, torch.ones(H, device=DEV), window=T)
    assert_close("o", F.scaled_dot_product_attention(q, k, v, is_causal=True), o, 1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_steps_cuda(dtype):
    _, ref, tri = _modules()
    B, H, T, D, W = 2, 4, 80, 64, 16
    q, k, v = torch.rand(B, H, T, D, device=DEV), torch.rand(B, H, T, D, device=DEV), torch.randn(B, H, T, D, device=DEV)
    log_decay = -torch.rand(B, H, T, D, device=DEV)
    gamma = torch.rand(H, device=DEV)
    cases = [("causal_linear_attention", (q, k, v), dict(normalize=True)),
             ("gated_linear_attention", (q, k, v, log_decay), dict(normalize=True, scale=0.2)),
             ("hybrid_window_attention", (q, k, v, q, k, gamma), dict(window=W))]
    with torch.no_grad():
        for op, args, kwargs in cases:
            cast = [a.to(dtype) if a.dim() == 4 else a for a in args]
            o_r, s_r = getattr(ref, op)(*[a.float() for a in cast], **kwargs)
            prefill = [a[:, :, :50] if a.dim() == 4 else a for a in cast]
            o, state = getattr(tri, op)(*prefill, **kwargs)
            outs = [o]
            for t in range(50, T):
                token = [a[:, :, t : t + 1] if a.dim() == 4 else a for a in cast]
                o, state = getattr(tri, op + "_step")(*token, state, **kwargs)
                outs.append(o)
            assert_close(f"{op} o", o_r, torch.cat(outs, 2), TOL[dtype])
            assert_close(f"{op} kv", s_r.kv, state.kv, TOL[dtype])
