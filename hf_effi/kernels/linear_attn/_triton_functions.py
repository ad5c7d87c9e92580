"""autograd.Functions around the Triton kernels: allocate outputs, launch, and glue the backward passes together.

Outputs are allocated through ``_empty`` alone, so tests can swap it for a NaN-filled allocator and catch any
element a kernel forgot to write.
"""

from __future__ import annotations

import torch
import triton

from ._triton_hybrid import window_bwd_dkv_kernel, window_bwd_dq_kernel, window_fwd_kernel
from ._triton_linear import chunk_bwd_dkv_kernel, chunk_bwd_dq_kernel, chunk_fwd_kernel

__all__ = ["ChunkLinearFunction", "WindowSoftmaxFunction", "block_size", "dot_precision", "empty"]


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every kernel output is allocated here, so tests can poison it with NaN and catch unwritten memory."""
    return torch.empty(*shape, dtype=dtype, device=device)


def block_size(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def dot_precision(x: torch.Tensor) -> str:
    # fp32 inputs get exact fp32 dots; half inputs are already rounded, so tf32 tensor cores lose nothing visible.
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _num_warps(g: torch.Tensor | None, BK: int) -> int:
    # The decay path holds a [BT, BT, BK] tensor of pairwise decays; spread it over more threads when it is big.
    return 8 if g is not None and BK >= 64 else 4


class ChunkLinearFunction(torch.autograd.Function):
    """o = scale·q S_t with S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ (g = None: no decay); returns (o, S_T)."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, chunk_size, out_dtype):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        g = g.contiguous() if g is not None else None
        h0 = h0.contiguous() if h0 is not None else None
        B, H, T, DK = q.shape
        DV = v.shape[-1]
        BK, BV = block_size(DK), min(block_size(DV), 64)
        grid = (B * H, triton.cdiv(DV, BV))
        o = empty(B, H, T, DV, dtype=out_dtype, device=q.device)
        ht = empty(B, H, DK, DV, dtype=torch.float32, device=q.device)
        chunk_fwd_kernel[grid](
            q, k, v, g if g is not None else q, h0 if h0 is not None else ht, o, ht,
            T, triton.cdiv(T, chunk_size), DK, DV, float(scale),
            HAS_DECAY=g is not None, HAS_H0=h0 is not None, STORE_HT=True,
            BT=chunk_size, BK=BK, BV=BV, DOT_PREC=dot_precision(q), num_warps=_num_warps(g, BK),
        )
        ctx.save_for_backward(q, k, v, g, h0, ht if g is not None else None)
        ctx.scale, ctx.chunk_size = float(scale), chunk_size
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, ht = ctx.saved_tensors
        B, H, T, DK = q.shape
        DV = v.shape[-1]
        BK, BV = block_size(DK), min(block_size(DV), 64)
        NV, NT = triton.cdiv(DV, BV), triton.cdiv(T, ctx.chunk_size)
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        meta = dict(BT=ctx.chunk_size, BK=BK, BV=BV, DOT_PREC=dot_precision(q), num_warps=_num_warps(g, BK))
        f32 = dict(dtype=torch.float32, device=q.device)
        dq = empty(NV, B, H, T, DK, **f32)
        dk = empty(NV, B, H, T, DK, **f32)
        dv = empty(B, H, T, DV, **f32)
        want_dh0 = h0 is not None and ctx.needs_input_grad[4]
        dh0 = empty(B, H, DK, DV, **f32) if want_dh0 else None
        g_arg = g if g is not None else q
        chunk_bwd_dq_kernel[(B * H, NV)](
            k, v, g_arg, h0 if h0 is not None else q, do, dq, T, NT, DK, DV, ctx.scale,
            HAS_DECAY=g is not None, HAS_H0=h0 is not None, **meta,
        )
        chunk_bwd_dkv_kernel[(B * H, NV)](
            q, k, v, g_arg, do, dht if dht is not None else dv, dk, dv, dh0 if want_dh0 else dv,
            T, NT, DK, DV, ctx.scale,
            HAS_DECAY=g is not None, HAS_DHT=dht is not None, STORE_DH0=want_dh0, **meta,
        )
        dq, dk = dq.sum(0), dk.sum(0)
        dg = None
        if g is not None and ctx.needs_input_grad[3]:
            # B_t = Σ_{u≤t} g_u enters as exp(B_t) on the query side and exp(−B_s) on the key side, so
            # ∂L/∂B_t = q_t·dq_t − k_t·dk_t (+ S_T·dS_T at the last step), and ∂L/∂g_u = Σ_{t≥u} ∂L/∂B_t.
            dlog = q.float() * dq - k.float() * dk
            dg = dlog.flip(2).cumsum(2).flip(2)
            if dht is not None:
                dg = dg + (ht * dht.float()).sum(-1).unsqueeze(2)
            dg = dg.to(g.dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg,
                dh0.to(h0.dtype) if want_dh0 else None, None, None, None)


class WindowSoftmaxFunction(torch.autograd.Function):
    """(N, D) of the hybrid's window half: N_t = Σ_{j∈W(t)} exp(s_tj − m_t) v_j, D_t = Σ exp(s_tj − m_t), m_t the max.

    k, v: ``[B, H, T + W, D]`` (the W carried window slots, then the sequence); km: ``[B, T + W]`` float 0/1.
    """

    @staticmethod
    def forward(ctx, q, k, v, km, window, scale, block):
        q, k, v, km = q.contiguous(), k.contiguous(), v.contiguous(), km.contiguous()
        B, H, T, DQK = q.shape
        DV = v.shape[-1]
        f32 = dict(dtype=torch.float32, device=q.device)
        num = empty(B, H, T, DV, **f32)
        den = empty(B, H, T, **f32)
        mx = empty(B, H, T, **f32)
        arg = empty(B, H, T, dtype=torch.int32, device=q.device)
        meta = dict(BT=block, BS=block, BD=block_size(DQK), BV=block_size(DV), DOT_PREC=dot_precision(q))
        window_fwd_kernel[(B * H, triton.cdiv(T, block))](
            q, k, v, km, num, den, mx, arg, T, H, window, DQK, DV, float(scale), triton.cdiv(block + window - 1, block),
            **meta,
        )
        ctx.save_for_backward(q, k, v, km, num, den, mx, arg)
        ctx.window, ctx.scale, ctx.meta = window, float(scale), meta
        ctx.set_materialize_grads(False)
        return num, den

    @staticmethod
    def backward(ctx, dnum, dden):
        q, k, v, km, num, den, mx, arg = ctx.saved_tensors
        B, H, T, DQK = q.shape
        DV, TK, W, block = v.shape[-1], k.shape[2], ctx.window, ctx.meta["BT"]
        dnum = torch.zeros_like(num) if dnum is None else dnum.float().contiguous()
        dden = torch.zeros_like(den) if dden is None else dden.float().contiguous()
        f32 = dict(dtype=torch.float32, device=q.device)
        dq = empty(B, H, T, DQK, **f32)
        dk = empty(B, H, TK, DQK, **f32)
        dv = empty(B, H, TK, DV, **f32)
        window_bwd_dq_kernel[(B * H, triton.cdiv(T, block))](
            q, k, v, km, mx, dnum, dden, dq, T, H, W, DQK, DV, ctx.scale, triton.cdiv(block + W - 1, block),
            **ctx.meta,
        )
        window_bwd_dkv_kernel[(B * H, triton.cdiv(TK, block))](
            q, k, v, km, mx, dnum, dden, dk, dv, T, H, W, DQK, DV, ctx.scale, triton.cdiv(block + W - 1, block),
            **ctx.meta,
        )
        # The row max m_t = s_{t,a_t} scales both N_t and D_t by exp(−m_t): ∂L/∂s_{t,a_t} gains −(dN_t·N_t + dD_t·D_t).
        dmax = -((dnum * num).sum(-1) + dden * den) * ctx.scale
        index = arg.long().unsqueeze(-1)
        dq += dmax.unsqueeze(-1) * k.float().gather(2, index.expand(B, H, T, DQK))
        dk.scatter_add_(2, index.expand(B, H, T, DQK), dmax.unsqueeze(-1) * q.float())
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None
