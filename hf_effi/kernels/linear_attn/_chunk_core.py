"""The three chunked building blocks behind ``chunk.py``: plain linear, gated (decayed) linear, and banded softmax.

All work on fp32 tensors ``[B, H, T, D]`` that already have padding zeroed, and are plain autograd (no custom
backward). A sequence is cut into N = ceil(T / C) chunks of C tokens (the tail zero-padded, which adds nothing):
inside a chunk the weights are a dense [C, C] matrix; across chunks only a [Dk, Dv] state travels. Time and
saved memory are O(T·C·D + N·Dk·Dv) instead of O(T²).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["banded_softmax_chunks", "gated_linear_chunks", "linear_chunks"]


def _to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """``[B, H, T, D]`` -> ``[B, H, N, C, D]``, zero-padding the tail."""
    pad = (-x.shape[2]) % C
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.unflatten(2, (-1, C))


def _from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.flatten(2, 3)[:, :, :T]


def linear_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv0: torch.Tensor,
                  C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """o_t = q_t (kv0 + Σ_{s≤t} k_s v_sᵀ), unnormalised; returns (o ``[B,H,T,Dv]``, final state ``[B,H,Dk,Dv]``).

    Normalisation is the caller's extra all-ones value column (its output column is q_t·z_t). The chunk states
    are an inclusive cumsum of per-chunk k_cᵀv_c, so there is no Python loop over chunks.
    """
    T = q.shape[2]
    qc, kc, vc = _to_chunks(q, C), _to_chunks(k, C), _to_chunks(v, C)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, N, C, C]
    chunk_kv = kc.transpose(-1, -2) @ vc  # [B, H, N, Dk, Dv]
    kv_after = kv0.unsqueeze(2) + chunk_kv.cumsum(dim=2)
    kv_before = torch.cat([kv0.unsqueeze(2), kv_after[:, :, :-1]], dim=2)  # not kv_after - chunk_kv: no cancellation
    o = scores @ vc + qc @ kv_before
    return _from_chunks(o, T), kv_after[:, :, -1]


def _sub_chunk(C: int) -> int:
    """Secondary chunk size ≈ √C (power of two): balances the [C/c, C, Dk] and [c, c, Dk] decay tensors."""
    return 2 ** (int(math.log2(C)) // 2)


def _intra_chunk_decayed_scores(qc: torch.Tensor, kc: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A[i, j] = Σ_d q_i[d] k_j[d] exp(b_i[d] − b_j[d]) for j ≤ i inside each chunk, never exponentiating a positive.

    GLA's secondary chunking (arXiv 2312.06635, §4.2): the chunk is cut into sub-chunks of c tokens. A key j in an
    earlier sub-chunk than query i factorises through r_I, the cumulative decay at the end of the sub-chunk before
    i's: exp(b_i − r_I)·exp(r_I − b_j), both exponents <= 0, so it is one matmul per sub-chunk. Pairs inside one
    sub-chunk use the exact pairwise [c, c, Dk] decay tensor. b is nonincreasing (log-decays <= 0).
    """
    C = qc.shape[-2]
    c = _sub_chunk(C)
    S = C // c
    device = qc.device
    bs, qs, ks = b.unflatten(-2, (S, c)), qc.unflatten(-2, (S, c)), kc.unflatten(-2, (S, c))  # [..., S, c, Dk]
    ref = torch.cat([torch.zeros_like(bs[..., :1, 0, :]), bs[..., :-1, -1, :]], dim=-2)  # [..., S, Dk]
    q_off = qs * (bs - ref.unsqueeze(-2)).exp()
    earlier = torch.arange(C, device=device)[None, :] < (torch.arange(S, device=device) * c)[:, None]  # [S, C]
    k_exp = (ref.unsqueeze(-2) - b.unsqueeze(-3)).masked_fill(~earlier[..., None], float("-inf"))
    k_off = kc.unsqueeze(-3) * k_exp.exp()  # [..., S, C, Dk]; zero for keys not before the sub-chunk
    scores_off = q_off @ k_off.transpose(-1, -2)  # [..., S, c, C]

    causal = torch.ones(c, c, dtype=torch.bool, device=device).tril()[..., None]
    pair = (bs.unsqueeze(-2) - bs.unsqueeze(-3)).masked_fill(~causal, float("-inf")).exp()  # [..., S, c, c, Dk]
    scores_diag = torch.einsum("...id,...ijd,...jd->...ij", qs, pair, ks)  # [..., S, c, c]
    eye = torch.eye(S, dtype=qc.dtype, device=device)[:, None, :, None]  # place each block on the diagonal
    scores = scores_off.unflatten(-1, (S, c)) + scores_diag.unsqueeze(-2) * eye  # [..., S, c, S, c]
    return scores.reshape(*qc.shape[:-1], C)


def gated_linear_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                        kv0: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GLA, o_t = q_t S_t with S_t = diag(exp(g_t)) S_{t−1} + k_t v_tᵀ; returns (o, final state).

    Chunk form (GLA paper Eq. 4-5, b = within-chunk inclusive cumsum of g): o = (Q⊙e^b) S_prev + intra(Q, K, b) V,
    S_next = diag(e^{b_C}) S_prev + (K⊙e^{b_C − b})ᵀ V. Every exponent is <= 0, so log-decays of −5 per step
    over 64-token chunks (a factor e^−320) underflow to exact zeros instead of overflowing. The state recursion
    runs as a Python loop over the N chunks (N = T / C small tensors, each [B, H, Dk, Dv]).
    """
    T = q.shape[2]
    qc, kc, vc, gc = (_to_chunks(x, C) for x in (q, k, v, log_decay))
    b = gc.cumsum(dim=3)  # [B, H, N, C, Dk]
    scores = _intra_chunk_decayed_scores(qc, kc, b)
    b_last = b[:, :, :, -1:]
    chunk_kv = (kc * (b_last - b).exp()).transpose(-1, -2) @ vc  # [B, H, N, Dk, Dv]
    chunk_decay = b_last.squeeze(3).exp().unsqueeze(-1)  # [B, H, N, Dk, 1]
    states = []
    kv = kv0
    # unbind, not chunk_kv[:, :, n]: indexing backward would scatter into a full-size zero tensor per chunk (O(N²))
    for decay_n, kv_n in zip(chunk_decay.unbind(2), chunk_kv.unbind(2)):
        states.append(kv)
        kv = decay_n * kv + kv_n
    kv_before = torch.stack(states, dim=2)
    o = scores @ vc + (qc * b.exp()) @ kv_before
    return _from_chunks(o, T), kv


def banded_softmax_chunks(q: torch.Tensor, k_ext: torch.Tensor, v_ext: torch.Tensor, ext_mask: torch.Tensor,
                          window: int, scale: float, C: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unnormalised softmax over W(t): returns (Σ_j exp(s_tj − m_t) v_j ``[B,H,T,Dv]``, Σ_j exp(s_tj − m_t) ``[B,H,T,1]``,
    m_t ``[B,H,T,1]``).

    ``k_ext``/``v_ext`` ``[B, H, W+T, ·]`` are the window slots of the history (positions −W … −1) followed by the
    sequence, ``ext_mask`` ``[B, W+T]`` marks real ones. Queries of chunk n only see extended indices
    nC … nC+C+W−1, so each chunk scores a [C, C+W] band (an ``unfold`` view) instead of the whole [T, T] matrix.
    m_t is the true row max over the window (0 for a row with no real key, i.e. a padded query).
    """
    T, W = q.shape[2], window
    N = -(-T // C)
    L = C + W
    qc = _to_chunks(q, C)
    extra = N * C + W - k_ext.shape[2]
    k_ext, v_ext = F.pad(k_ext, (0, 0, 0, extra)), F.pad(v_ext, (0, 0, 0, extra))
    ext_mask = F.pad(ext_mask, (0, extra), value=False)
    k_blocks = k_ext.unfold(2, L, C)  # [B, H, N, D, L]
    v_blocks = v_ext.unfold(2, L, C).transpose(-1, -2)  # [B, H, N, L, Dv]
    m_blocks = ext_mask.unfold(1, L, C)  # [B, N, L]
    r = torch.arange(L, device=q.device)[None, :]
    i = torch.arange(C, device=q.device)[:, None]
    band = (r > i) & (r <= i + W)  # query i of a chunk sees block slot r: position nC+r−W in (nC+i−W, nC+i]
    keep = band & m_blocks[:, None, :, None, :]  # [B, 1, N, C, L]
    s = (scale * (qc @ k_blocks)).masked_fill(~keep, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
    p = torch.exp(s - m)
    return _from_chunks(p @ v_blocks, T), _from_chunks(p.sum(-1, keepdim=True), T), _from_chunks(m, T)
