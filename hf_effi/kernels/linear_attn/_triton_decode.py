"""One-token decode kernel for (gated) causal linear attention: update the fp32 state, read the output.

S' = diag(exp(g)) S + k vᵀ, z' = exp(g) ⊙ z + k, o = scale·q S' / (scale·q·z' + eps) (no division without
``NORMALIZE``). One program per (batch-head, block of value columns); the normaliser is recomputed by each V block
(it is only DK numbers) and stored by block 0 alone. The new state goes to fresh buffers so the op stays functional.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["hybrid_step_kernel", "linear_step_kernel"]


@triton.jit
def linear_step_kernel(
    q, k, v, g, kv, ksum, o, kv_out, ksum_out, DK, DV, scale, eps,
    HAS_DECAY: tl.constexpr, HAS_STATE: tl.constexpr, NORMALIZE: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < DK
    mask_v = offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    state_off = i_bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    b_q = tl.load(q + i_bh * DK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_k = tl.load(k + i_bh * DK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_v = tl.load(v + i_bh * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_STATE:
        state = tl.load(kv + state_off, mask=mask_kv, other=0.0).to(tl.float32)
    if HAS_DECAY:
        b_decay = tl.exp(tl.load(g + i_bh * DK + offs_k, mask=mask_k, other=0.0).to(tl.float32))
        state = state * b_decay[:, None]
    state += b_k[:, None] * b_v[None, :]
    out = tl.sum(b_q[:, None] * state, axis=0) * scale
    if NORMALIZE:
        z = tl.zeros([BK], dtype=tl.float32)
        if HAS_STATE:
            z = tl.load(ksum + i_bh * DK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        if HAS_DECAY:
            z = z * b_decay
        z += b_k
        out = out / (tl.sum(b_q * z, axis=0) * scale + eps)
        tl.store(ksum_out + i_bh * DK + offs_k, z, mask=mask_k & (offs_k * 0 + i_v == 0))
    tl.store(o + i_bh * DV + offs_v, out.to(o.dtype.element_ty), mask=mask_v)
    tl.store(kv_out + state_off, state, mask=mask_kv)


@triton.jit
def hybrid_step_kernel(
    q, fq, wk, wv, wm, fk_old, v_old, old_real, kv, ksum, gamma, o, kv_out, ksum_out,
    H, W, DQK, F, DV, scale, eps,
    BW: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
):
    """One hybrid decode token. ``wk``/``wv``/``wm`` are the window AFTER the shift (the new token is its last slot);
    ``fk_old``/``v_old`` is the slot that just left it, folded into the linear state when it was a real token."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b = i_bh // H
    offs_w = tl.arange(0, BW)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_w = offs_w < W
    mask_d = offs_d < DQK
    mask_f = offs_f < F
    mask_v = offs_v < DV
    mask_fv = mask_f[:, None] & mask_v[None, :]
    real = (tl.load(wm + i_b * W + offs_w, mask=mask_w, other=0.0) > 0.5) & mask_w
    b_q = tl.load(q + i_bh * DQK + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    b_wk = tl.load(wk + i_bh * W * DQK + offs_w[:, None] * DQK + offs_d[None, :],
                   mask=mask_w[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    b_wv = tl.load(wv + i_bh * W * DV + offs_w[:, None] * DV + offs_v[None, :],
                   mask=mask_w[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
    s = tl.where(real, tl.sum(b_wk * b_q[None, :], axis=1) * scale, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=0))  # the new token is real, so the max is finite
    b_gamma = tl.load(gamma + i_bh % H).to(tl.float32)
    state_off = i_bh * F * DV + offs_f[:, None] * DV + offs_v[None, :]
    b_fk = tl.load(fk_old + i_bh * F + offs_f, mask=mask_f, other=0.0).to(tl.float32)
    b_vo = tl.load(v_old + i_bh * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    b_old = tl.load(old_real + i_b + offs_f * 0)  # [BF] copies of the scalar 0/1 flag
    b_fk = b_fk * b_old
    state = tl.load(kv + state_off, mask=mask_fv, other=0.0) + b_fk[:, None] * b_vo[None, :]
    z = tl.load(ksum + i_bh * F + offs_f, mask=mask_f, other=0.0) + b_fk
    b_fq = tl.load(fq + i_bh * F + offs_f, mask=mask_f, other=0.0).to(tl.float32)
    numer = b_gamma * tl.sum(p[:, None] * b_wv, axis=0) + tl.sum(b_fq[:, None] * state, axis=0)
    denom = b_gamma * tl.sum(p, axis=0) + tl.sum(b_fq * z, axis=0) + eps
    tl.store(o + i_bh * DV + offs_v, (numer / denom).to(o.dtype.element_ty), mask=mask_v)
    tl.store(kv_out + state_off, state, mask=mask_fv)
    tl.store(ksum_out + i_bh * F + offs_f, z, mask=mask_f & (offs_f * 0 + i_v == 0))
