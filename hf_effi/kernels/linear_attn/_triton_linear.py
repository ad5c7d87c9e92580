"""Chunked Triton kernels for causal linear attention with optional per-key-dimension decay (GLA).

One kernel family serves both ops: plain causal linear attention is the decay-free specialisation (the constexpr
``HAS_DECAY`` removes every exp), so the two ops cannot drift apart.

Recurrence (per batch-head, ``S`` is ``[DK, DV]``, fp32):  S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ,  o_t = scale·q_t S_t.
Chunked form (GLA paper, Yang et al., arXiv 2312.06635, §4): inside a chunk of BT positions with b = cumsum(g),
  o_t = scale·[(q_t ⊙ exp(b_t)) S_start + Σ_{s≤t} A_ts v_s],   A_ts = Σ_d q_td k_sd exp(b_td − b_sd),
  S_end = diag(exp(b_last)) S_start + Σ_s (k_s ⊙ exp(b_last − b_s)) v_sᵀ.
The intra-chunk scores are formed as a [BT, BT, BK] tensor of exp(b_t − b_s) masked to s ≤ t before the exp, so every
exponent is ≤ 0 and no decay, however strong, can overflow (the factorised q·exp(b), k·exp(−b) form overflows once
a chunk's log-decay passes about −88). That is why the decay path uses small chunks (16).

Every program owns one batch-head and one block of value columns and walks the chunks in order (forward, dq) or in
reverse (dk, dv, dh0). All loads are upcast to fp32 at once (the interpreter mis-computes bf16 arithmetic, and the
GPU wants fp32 accumulation anyway); dots run in fp32 (``DOT_PREC``: "ieee" for fp32 inputs, "tf32" otherwise).
The log-decay gradient is not formed here: it is a reverse cumulative sum of q·dq − k·dk, done by the caller.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["chunk_fwd_kernel", "chunk_bwd_dq_kernel", "chunk_bwd_dkv_kernel"]


@triton.jit
def _masked_decay(b_b, causal):
    """exp(b_t − b_s) for s ≤ t, 0 above the diagonal, as a [BT(t), BT(s), BK] tensor (exponents masked first)."""
    diff = b_b[:, None, :] - b_b[None, :, :]
    return tl.exp(tl.where(causal[:, :, None], diff, float("-inf")))


@triton.jit
def chunk_fwd_kernel(
    q, k, v, g, h0, o, ht, T, NT, DK, DV, scale,
    HAS_DECAY: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < DK
    mask_v = offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    state_off = i_bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    causal = offs_t[:, None] >= offs_t[None, :]
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state = tl.load(h0 + state_off, mask=mask_kv, other=0.0).to(tl.float32)
    for i_t in range(NT):
        rows = i_t * BT + offs_t
        mask_t = rows < T
        qk_off = i_bh * T * DK + rows[:, None] * DK + offs_k[None, :]
        v_off = i_bh * T * DV + rows[:, None] * DV + offs_v[None, :]
        mask_tk = mask_t[:, None] & mask_k[None, :]
        mask_tv = mask_t[:, None] & mask_v[None, :]
        b_q = tl.load(q + qk_off, mask=mask_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + qk_off, mask=mask_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + v_off, mask=mask_tv, other=0.0).to(tl.float32)
        if HAS_DECAY:
            b_g = tl.load(g + qk_off, mask=mask_tk, other=0.0).to(tl.float32)
            b_b = tl.cumsum(b_g, axis=0)
            b_last = tl.sum(b_g, axis=0)  # rows past T load g = 0, so this is b at the last real row
            acc = tl.dot(b_q * tl.exp(b_b), state, input_precision=DOT_PREC)
            scores = tl.sum(b_q[:, None, :] * b_k[None, :, :] * _masked_decay(b_b, causal), axis=2)
            k_to_end = b_k * tl.exp(b_last[None, :] - b_b)
            state = state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k_to_end), b_v, input_precision=DOT_PREC)
        else:
            acc = tl.dot(b_q, state, input_precision=DOT_PREC)
            scores = tl.where(causal, tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC), 0.0)
            state += tl.dot(tl.trans(b_k), b_v, input_precision=DOT_PREC)
        acc += tl.dot(scores, b_v, input_precision=DOT_PREC)
        tl.store(o + v_off, (acc * scale).to(o.dtype.element_ty), mask=mask_tv)
    if STORE_HT:
        tl.store(ht + state_off, state, mask=mask_kv)


@triton.jit
def chunk_bwd_dq_kernel(
    k, v, g, h0, do, dq, T, NT, DK, DV, scale,
    HAS_DECAY: tl.constexpr, HAS_H0: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dq_t = scale·[exp(b_t) ⊙ (S_start do_tᵀ) + Σ_{s≤t} (do_t·v_s) k_s ⊙ exp(b_t − b_s)]; one partial per V block."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < DK
    mask_v = offs_v < DV
    causal = offs_t[:, None] >= offs_t[None, :]
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state_off = i_bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
        state = tl.load(h0 + state_off, mask=mask_k[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
    dq_base = dq + i_v.to(tl.int64) * tl.num_programs(0) * T * DK
    for i_t in range(NT):
        rows = i_t * BT + offs_t
        mask_t = rows < T
        qk_off = i_bh * T * DK + rows[:, None] * DK + offs_k[None, :]
        v_off = i_bh * T * DV + rows[:, None] * DV + offs_v[None, :]
        mask_tk = mask_t[:, None] & mask_k[None, :]
        mask_tv = mask_t[:, None] & mask_v[None, :]
        b_k = tl.load(k + qk_off, mask=mask_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + v_off, mask=mask_tv, other=0.0).to(tl.float32)
        b_do = tl.load(do + v_off, mask=mask_tv, other=0.0).to(tl.float32)
        do_v = tl.where(causal, tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC), 0.0)
        if HAS_DECAY:
            b_g = tl.load(g + qk_off, mask=mask_tk, other=0.0).to(tl.float32)
            b_b = tl.cumsum(b_g, axis=0)
            b_last = tl.sum(b_g, axis=0)  # rows past T load g = 0, so this is b at the last real row
            acc = tl.exp(b_b) * tl.dot(b_do, tl.trans(state), input_precision=DOT_PREC)
            acc += tl.sum(do_v[:, :, None] * b_k[None, :, :] * _masked_decay(b_b, causal), axis=1)
            k_to_end = b_k * tl.exp(b_last[None, :] - b_b)
            state = state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k_to_end), b_v, input_precision=DOT_PREC)
        else:
            acc = tl.dot(b_do, tl.trans(state), input_precision=DOT_PREC)
            acc += tl.dot(do_v, b_k, input_precision=DOT_PREC)
            state += tl.dot(tl.trans(b_k), b_v, input_precision=DOT_PREC)
        tl.store(dq_base + qk_off, acc * scale, mask=mask_tk)


@triton.jit
def chunk_bwd_dkv_kernel(
    q, k, v, g, do, dht, dk, dv, dh0, T, NT, DK, DV, scale,
    HAS_DECAY: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Reverse walk carrying dS (the gradient of the state at the current chunk's end); dk is a per-V-block partial."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < DK
    mask_v = offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    state_off = i_bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    causal = offs_t[:, None] >= offs_t[None, :]
    dstate = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dstate = tl.load(dht + state_off, mask=mask_kv, other=0.0).to(tl.float32)
    dk_base = dk + i_v.to(tl.int64) * tl.num_programs(0) * T * DK
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev
        rows = i_t * BT + offs_t
        mask_t = rows < T
        qk_off = i_bh * T * DK + rows[:, None] * DK + offs_k[None, :]
        v_off = i_bh * T * DV + rows[:, None] * DV + offs_v[None, :]
        mask_tk = mask_t[:, None] & mask_k[None, :]
        mask_tv = mask_t[:, None] & mask_v[None, :]
        b_q = tl.load(q + qk_off, mask=mask_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + qk_off, mask=mask_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + v_off, mask=mask_tv, other=0.0).to(tl.float32)
        b_do = tl.load(do + v_off, mask=mask_tv, other=0.0).to(tl.float32)
        do_v = tl.where(causal, tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC), 0.0)  # [t, s]
        if HAS_DECAY:
            b_g = tl.load(g + qk_off, mask=mask_tk, other=0.0).to(tl.float32)
            b_b = tl.cumsum(b_g, axis=0)
            b_last = tl.sum(b_g, axis=0)  # rows past T load g = 0, so this is b at the last real row
            decay = _masked_decay(b_b, causal)
            scores = tl.sum(b_q[:, None, :] * b_k[None, :, :] * decay, axis=2) * scale
            k_to_end = b_k * tl.exp(b_last[None, :] - b_b)
            acc_dv = tl.dot(tl.trans(scores), b_do, input_precision=DOT_PREC)
            acc_dv += tl.dot(k_to_end, dstate, input_precision=DOT_PREC)
            acc_dk = tl.sum(do_v[:, :, None] * b_q[:, None, :] * decay, axis=0) * scale
            acc_dk += tl.exp(b_last[None, :] - b_b) * tl.dot(b_v, tl.trans(dstate), input_precision=DOT_PREC)
            dstate = dstate * tl.exp(b_last)[:, None]
            dstate += tl.dot(tl.trans(b_q * tl.exp(b_b)), b_do, input_precision=DOT_PREC) * scale
        else:
            scores = tl.where(causal, tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC), 0.0) * scale
            acc_dv = tl.dot(tl.trans(scores), b_do, input_precision=DOT_PREC)
            acc_dv += tl.dot(b_k, dstate, input_precision=DOT_PREC)
            acc_dk = tl.dot(tl.trans(do_v), b_q, input_precision=DOT_PREC) * scale
            acc_dk += tl.dot(b_v, tl.trans(dstate), input_precision=DOT_PREC)
            dstate += tl.dot(tl.trans(b_q), b_do, input_precision=DOT_PREC) * scale
        tl.store(dv + v_off, acc_dv, mask=mask_tv)
        tl.store(dk_base + qk_off, acc_dk, mask=mask_tk)
    if STORE_DH0:
        tl.store(dh0 + state_off, dstate, mask=mask_kv)
