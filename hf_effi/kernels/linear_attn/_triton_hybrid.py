"""Triton kernels for the sliding-window softmax half of the LoLCATs hybrid (Zhang et al., arXiv 2410.10254, Eq. 7).

For query t the kernels compute, over the keys in its window W(t),
  m_t = max_j s_tj,   N_t = Σ_j exp(s_tj − m_t) v_j,   D_t = Σ_j exp(s_tj − m_t),   s_tj = scale·q_t·k_j,
plus the index of the maximising key. The caller mixes them with the linear half (γ·N + fq·S) / (γ·D + fq·z + eps).
Unlike flash attention, m_t does not cancel in the hybrid (the linear term is not scaled by exp(−m_t)), so the
backward needs ∂/∂m_t; the kernels here give the exp-weighted part ds_tj = P_tj (dN_t·v_j + dD_t), and the caller adds
the row-max part −(dN_t·N_t + dD_t·D_t) at the saved argmax column (what autograd of ``amax`` gives for a unique max).

Keys come as one sequence of length T + W: the W window slots carried in the state (oldest first), then the T new
keys; query t (query coordinates) sees key column c (key coordinates) when t < c <= t + W and the key is real
(``km`` is a [B, T + W] 0/1 float mask). Exponents are masked to −inf before exp, and a row with no real key uses
0 as its max, so no NaN appears. Loads are upcast to fp32 at once; dots are fp32 (``DOT_PREC``).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["window_bwd_dkv_kernel", "window_bwd_dq_kernel", "window_fwd_kernel"]


@triton.jit
def _masked_scores(b_q, b_k, real, rows, cols, W, scale, DOT_PREC: tl.constexpr):
    s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC) * scale
    valid = (cols[None, :] > rows[:, None]) & (cols[None, :] <= rows[:, None] + W) & real[None, :]
    return tl.where(valid, s, float("-inf"))


@triton.jit
def window_fwd_kernel(
    q, k, v, km, num, den, mx, arg, T, H, W, DQK, DV, scale, NJ,
    BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_t = tl.program_id(1)
    TK = T + W
    rows = i_t * BT + tl.arange(0, BT)
    mask_t = rows < T
    offs_d = tl.arange(0, BD)
    offs_v = tl.arange(0, BV)
    mask_d = offs_d < DQK
    mask_v = offs_v < DV
    b_q = tl.load(q + i_bh * T * DQK + rows[:, None] * DQK + offs_d[None, :],
                  mask=mask_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    k_bh = k + i_bh * TK * DQK
    v_bh = v + i_bh * TK * DV
    km_b = km + (i_bh // H) * TK
    m = tl.full([BT], float("-inf"), dtype=tl.float32)
    lsum = tl.zeros([BT], dtype=tl.float32)
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    idx = tl.zeros([BT], dtype=tl.int32)
    for i_j in range(NJ):
        cols = i_t * BT + 1 + i_j * BS + tl.arange(0, BS)
        mask_c = cols < TK
        b_k = tl.load(k_bh + cols[:, None] * DQK + offs_d[None, :], mask=mask_c[:, None] & mask_d[None, :],
                      other=0.0).to(tl.float32)
        b_v = tl.load(v_bh + cols[:, None] * DV + offs_v[None, :], mask=mask_c[:, None] & mask_v[None, :],
                      other=0.0).to(tl.float32)
        real = tl.load(km_b + cols, mask=mask_c, other=0.0) > 0.5
        s = _masked_scores(b_q, b_k, real, rows, cols, W, scale, DOT_PREC)
        blk_max = tl.max(s, axis=1)
        blk_arg = tl.argmax(s, axis=1).to(tl.int32) + (i_t * BT + 1 + i_j * BS)
        idx = tl.where(blk_max > m, blk_arg, idx)
        new_m = tl.maximum(m, blk_max)
        safe_m = tl.where(new_m == float("-inf"), 0.0, new_m)
        alpha = tl.exp(m - safe_m)
        p = tl.exp(s - safe_m[:, None])
        acc = acc * alpha[:, None] + tl.dot(p, b_v, input_precision=DOT_PREC)
        lsum = lsum * alpha + tl.sum(p, axis=1)
        m = new_m
    tl.store(num + i_bh * T * DV + rows[:, None] * DV + offs_v[None, :], acc, mask=mask_t[:, None] & mask_v[None, :])
    tl.store(den + i_bh * T + rows, lsum, mask=mask_t)
    tl.store(mx + i_bh * T + rows, m, mask=mask_t)
    tl.store(arg + i_bh * T + rows, idx, mask=mask_t)


@triton.jit
def window_bwd_dq_kernel(
    q, k, v, km, mx, dnum, dden, dq, T, H, W, DQK, DV, scale, NJ,
    BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dq_t = scale·Σ_j P_tj (dN_t·v_j + dD_t) k_j over the window (the row-max part is added by the caller)."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_t = tl.program_id(1)
    TK = T + W
    rows = i_t * BT + tl.arange(0, BT)
    mask_t = rows < T
    offs_d = tl.arange(0, BD)
    offs_v = tl.arange(0, BV)
    mask_d = offs_d < DQK
    mask_v = offs_v < DV
    q_off = i_bh * T * DQK + rows[:, None] * DQK + offs_d[None, :]
    b_q = tl.load(q + q_off, mask=mask_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    b_dn = tl.load(dnum + i_bh * T * DV + rows[:, None] * DV + offs_v[None, :],
                   mask=mask_t[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
    b_dd = tl.load(dden + i_bh * T + rows, mask=mask_t, other=0.0).to(tl.float32)
    m = tl.load(mx + i_bh * T + rows, mask=mask_t, other=0.0)
    safe_m = tl.where(m == float("-inf"), 0.0, m)
    k_bh = k + i_bh * TK * DQK
    v_bh = v + i_bh * TK * DV
    km_b = km + (i_bh // H) * TK
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for i_j in range(NJ):
        cols = i_t * BT + 1 + i_j * BS + tl.arange(0, BS)
        mask_c = cols < TK
        b_k = tl.load(k_bh + cols[:, None] * DQK + offs_d[None, :], mask=mask_c[:, None] & mask_d[None, :],
                      other=0.0).to(tl.float32)
        b_v = tl.load(v_bh + cols[:, None] * DV + offs_v[None, :], mask=mask_c[:, None] & mask_v[None, :],
                      other=0.0).to(tl.float32)
        real = tl.load(km_b + cols, mask=mask_c, other=0.0) > 0.5
        p = tl.exp(_masked_scores(b_q, b_k, real, rows, cols, W, scale, DOT_PREC) - safe_m[:, None])
        ds = p * (tl.dot(b_dn, tl.trans(b_v), input_precision=DOT_PREC) + b_dd[:, None])
        acc += tl.dot(ds, b_k, input_precision=DOT_PREC)
    tl.store(dq + q_off, acc * scale, mask=mask_t[:, None] & mask_d[None, :])


@triton.jit
def window_bwd_dkv_kernel(
    q, k, v, km, mx, dnum, dden, dk, dv, T, H, W, DQK, DV, scale, NQ,
    BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dk_j, dv_j for one block of key columns, looping over the queries c − W <= t < c that can see them."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1)
    TK = T + W
    cols = i_c * BS + tl.arange(0, BS)
    mask_c = cols < TK
    offs_d = tl.arange(0, BD)
    offs_v = tl.arange(0, BV)
    mask_d = offs_d < DQK
    mask_v = offs_v < DV
    k_off = i_bh * TK * DQK + cols[:, None] * DQK + offs_d[None, :]
    v_off = i_bh * TK * DV + cols[:, None] * DV + offs_v[None, :]
    b_k = tl.load(k + k_off, mask=mask_c[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    b_v = tl.load(v + v_off, mask=mask_c[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
    real = tl.load(km + (i_bh // H) * TK + cols, mask=mask_c, other=0.0) > 0.5
    acc_dk = tl.zeros([BS, BD], dtype=tl.float32)
    acc_dv = tl.zeros([BS, BV], dtype=tl.float32)
    for i_q in range(NQ):
        rows = i_c * BS - W + i_q * BT + tl.arange(0, BT)
        mask_t = (rows >= 0) & (rows < T)
        b_q = tl.load(q + i_bh * T * DQK + rows[:, None] * DQK + offs_d[None, :],
                      mask=mask_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        b_dn = tl.load(dnum + i_bh * T * DV + rows[:, None] * DV + offs_v[None, :],
                       mask=mask_t[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
        b_dd = tl.load(dden + i_bh * T + rows, mask=mask_t, other=0.0).to(tl.float32)
        m = tl.load(mx + i_bh * T + rows, mask=mask_t, other=0.0)
        safe_m = tl.where(m == float("-inf"), 0.0, m)
        s = _masked_scores(b_q, b_k, real & mask_c, rows, cols, W, scale, DOT_PREC)
        p = tl.where(mask_t[:, None], tl.exp(s - safe_m[:, None]), 0.0)
        acc_dv += tl.dot(tl.trans(p), b_dn, input_precision=DOT_PREC)
        ds = p * (tl.dot(b_dn, tl.trans(b_v), input_precision=DOT_PREC) + b_dd[:, None])
        acc_dk += tl.dot(tl.trans(ds), b_q, input_precision=DOT_PREC)
    tl.store(dk + k_off, acc_dk * scale, mask=mask_c[:, None] & mask_d[None, :])
    tl.store(dv + v_off, acc_dv, mask=mask_c[:, None] & mask_v[None, :])
