"""Attention sinks in the hybrid: the first S real tokens stay under softmax after leaving the window."""

from __future__ import annotations

import pytest
import torch

import hf_effi.kernels.linear_attn as L
from hf_effi.kernels.linear_attn import chunk as C
from hf_effi.kernels.linear_attn import reference as R

B, H, T, D, FD = 2, 3, 17, 8, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    fk = torch.rand(B, H, T, FD, generator=g, dtype=torch.float64) + 0.1
    gamma = torch.rand(H, generator=g, dtype=torch.float64) + 0.05
    return q, k, v, fk, gamma


def _softmax_over(q, k, v, allowed, scale):
    s = (scale * q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("module", [R, C], ids=["reference", "chunk"])
@pytest.mark.parametrize(("window", "sinks"), [(3, 2), (1, 4), (5, 1)])
def test_without_linear_part_it_is_softmax_over_window_and_sinks(module, window, sinks):
    """fq = 0 switches the linear part off: what is left is softmax over the last `window` positions plus the
    first `sinks` ones, an SDPA mask written from the definition (independent of the sink bookkeeping)."""
    q, k, v, fk, gamma = _inputs()
    fq = torch.zeros_like(fk)
    o, _ = module.hybrid_window_attention(q, k, v, fq, fk, gamma, window=window, sinks=sinks, eps=0.0, scale=0.35)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((i - j < window) | (j < sinks))
    torch.testing.assert_close(o, _softmax_over(q, k, v, allowed, 0.35))


@pytest.mark.parametrize("module", [R, C], ids=["reference", "chunk"])
def test_sinks_are_the_first_real_tokens_under_left_padding(module):
    q, k, v, fk, gamma = _inputs()
    pad = 4
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, :pad] = False
    o, st = module.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=2, attention_mask=mask)
    alone, st_alone = module.hybrid_window_attention(*(t[1:, :, pad:] for t in (q, k, v, fk, fk)), gamma,
                                                     window=3, sinks=2)
    torch.testing.assert_close(o[1:, :, pad:], alone)
    torch.testing.assert_close(st.sink_k[1:], st_alone.sink_k)
    assert st.seen.tolist() == [T, T - pad] and st_alone.seen.tolist() == [T - pad]
    assert st.sink_mask.all()


def test_sinks_stay_out_of_the_linear_sums():
    """With more sinks than tokens that ever leave the window, the linear sums stay empty."""
    q, k, v, fk, gamma = _inputs()
    _, st = R.hybrid_window_attention(q, k, v, fk, fk, gamma, window=4, sinks=T - 4)
    assert st.kv.abs().max() == 0 and st.k_sum.abs().max() == 0
    _, st2 = R.hybrid_window_attention(q, k, v, fk, fk, gamma, window=4, sinks=T - 6)
    want = fk[:, :, T - 6:T - 4].transpose(-1, -2) @ v[:, :, T - 6:T - 4]
    torch.testing.assert_close(st2.kv, want)


def test_zero_sinks_is_the_plain_hybrid_and_its_state():
    q, k, v, fk, gamma = _inputs()
    o0, s0 = C.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3)
    o1, s1 = C.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=0)
    torch.testing.assert_close(o0, o1)
    assert s1.sink_k is None and s1.seen is None


def test_dispatch_falls_back_to_chunk_and_refuses_an_explicit_kernel_backend(monkeypatch):
    monkeypatch.delenv(L.ENV_VAR, raising=False)
    q, k, v, fk, gamma = (t.float() for t in _inputs())
    want, _ = C.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=2)
    got, _ = L.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=2)
    torch.testing.assert_close(got, want)
    monkeypatch.setenv(L.ENV_VAR, "triton")  # a preference: sinks run on chunk instead
    got, _ = L.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=2)
    torch.testing.assert_close(got, want)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # triton is then a valid explicit choice, refused for sinks
    with pytest.raises(ValueError, match="no attention sinks"):
        L.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=2, backend="triton")


@pytest.mark.parametrize(("sinks", "match"), [(-1, "sinks must be an int >= 0"), (1.5, "sinks must be an int"),
                                              (True, "sinks must be an int")])
def test_bad_sinks(sinks, match):
    q, k, v, fk, gamma = _inputs()
    with pytest.raises(ValueError, match=match):
        R.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=sinks)


def test_state_and_sinks_must_agree():
    q, k, v, fk, gamma = _inputs()
    _, plain = R.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3)
    _, sunk = R.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=2)
    with pytest.raises(ValueError, match="made without sinks"):
        C.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, sinks=2, initial_state=plain)
    with pytest.raises(ValueError, match="holds 2 attention sinks but sinks=0"):
        C.hybrid_window_attention(q, k, v, fk, fk, gamma, window=3, initial_state=sunk)
    with pytest.raises(ValueError, match="sink_k must have shape"):
        R.hybrid_window_attention_step(q[:, :, :1], k[:, :, :1], v[:, :, :1], fk[:, :, :1], fk[:, :, :1], gamma,
                                       sunk, window=3, sinks=3)
