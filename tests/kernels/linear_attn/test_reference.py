"""The linear-attention references: hand-computed cases, quadratic vs recurrent, SDPA limits, padding, decode steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_effi.kernels.linear_attn import reference as R

B, H, T, D, FD = 2, 3, 13, 8, 6


def _inputs(T=T, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=dtype) for _ in range(3))
    fq, fk = (torch.rand(B, H, T, FD, generator=g, dtype=dtype) + 0.1 for _ in range(2))
    log_decay = -3 * torch.rand(B, H, T, FD, generator=g, dtype=dtype)
    gamma = torch.rand(H, generator=g, dtype=dtype) + 0.05
    return dict(q=q, k=k, v=v, fq=fq, fk=fk, log_decay=log_decay, gamma=gamma)


def _left_padding(T=T, pad=(0, 4)):
    mask = torch.ones(B, T, dtype=torch.bool)
    for b, p in enumerate(pad):
        mask[b, :p] = False
    return mask


# name -> (quadratic, recurrent, positional args from _inputs, kwargs)
OPS = {
    "causal_linear": (R.causal_linear_attention, R.causal_linear_attention_recurrent, ("fq", "fk", "v"), {}),
    "causal_linear_unnormalized": (R.causal_linear_attention, R.causal_linear_attention_recurrent,
                                   ("fq", "fk", "v"), {"normalize": False}),
    "hybrid_w1": (R.hybrid_window_attention, R.hybrid_window_attention_recurrent,
                  ("q", "k", "v", "fq", "fk", "gamma"), {"window": 1}),
    "hybrid_w4": (R.hybrid_window_attention, R.hybrid_window_attention_recurrent,
                  ("q", "k", "v", "fq", "fk", "gamma"), {"window": 4, "scale": 0.3}),
    "hybrid_w32": (R.hybrid_window_attention, R.hybrid_window_attention_recurrent,
                   ("q", "k", "v", "fq", "fk", "gamma"), {"window": 32}),
    "hybrid_w4_sinks2": (R.hybrid_window_attention, R.hybrid_window_attention_recurrent,
                         ("q", "k", "v", "fq", "fk", "gamma"), {"window": 4, "scale": 0.3, "sinks": 2}),
    "hybrid_w1_sinks3": (R.hybrid_window_attention, R.hybrid_window_attention_recurrent,
                         ("q", "k", "v", "fq", "fk", "gamma"), {"window": 1, "sinks": 3}),
    "gated": (R.gated_linear_attention, R.gated_linear_attention_recurrent, ("fq", "fk", "v", "log_decay"),
              {"scale": 0.5}),
    "gated_normalized": (R.gated_linear_attention, R.gated_linear_attention_recurrent,
                         ("fq", "fk", "v", "log_decay"), {"normalize": True}),
    "sliding_w5": (R.sliding_window_attention, R.sliding_window_attention_recurrent, ("q", "k", "v"), {"window": 5}),
}


def _states_close(a, b, **tol):
    assert type(a) is type(b)
    for name, x, y in zip(a._fields, a, b):
        if x is None or y is None:
            assert x is None and y is None, name
        elif x.dtype == torch.bool:
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x.to(y.dtype), y, msg=name, **tol)


@pytest.mark.parametrize("name", list(OPS))
def test_quadratic_equals_recurrent_with_padding_and_initial_state(name):
    quad, rec, names, kw = OPS[name]
    x = _inputs()
    args = [x[n] for n in names]
    mask = _left_padding()
    _, state = quad(*[a[:, :, :5] for a in args if a.dim() == 4], *[a for a in args if a.dim() == 1], **kw)
    o1, s1 = quad(*args, initial_state=state, attention_mask=mask, **kw)
    o2, s2 = rec(*args, initial_state=state, attention_mask=mask, **kw)
    torch.testing.assert_close(o1, o2)
    _states_close(s1, s2)


@pytest.mark.parametrize("name", ["causal_linear", "hybrid_w4", "hybrid_w4_sinks2", "gated_normalized",
                                  "sliding_w5"])
def test_quadratic_and_recurrent_gradients_agree(name):
    quad, rec, names, kw = OPS[name]
    x = _inputs(T=7)
    grads = []
    for fn in (quad, rec):
        args = [x[n].detach().clone().requires_grad_() for n in names]
        o, st = fn(*args, attention_mask=_left_padding(7, (0, 2)), **kw)
        loss = (o * torch.linspace(-1, 1, o.shape[-1], dtype=o.dtype)).sum()
        loss = loss + sum((t * t).sum() for t in st if t is not None and t.is_floating_point())
        grads.append(torch.autograd.grad(loss, args))
    for a, b, n in zip(*grads, names):
        torch.testing.assert_close(a, b, msg=n)


def test_causal_linear_hand_computed():
    q = torch.tensor([1.0, 1.0]).view(1, 1, 2, 1)
    k = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1)
    v = torch.tensor([3.0, 5.0]).view(1, 1, 2, 1)
    o, st = R.causal_linear_attention(q, k, v, eps=0.0)
    torch.testing.assert_close(o.flatten(), torch.tensor([3.0, 13.0 / 3.0]))
    torch.testing.assert_close(st.kv.flatten(), torch.tensor([13.0]))
    torch.testing.assert_close(st.k_sum.flatten(), torch.tensor([3.0]))
    o, st = R.causal_linear_attention(q, k, v, normalize=False)
    torch.testing.assert_close(o.flatten(), torch.tensor([3.0, 13.0]))
    assert st.k_sum is None


def test_hybrid_hand_computed_window_one():
    """window=1: token t sees itself under softmax (weight γ·exp(0)) and tokens < t through the features."""
    v = torch.tensor([2.0, 7.0]).view(1, 1, 2, 1)
    q = k = torch.zeros(1, 1, 2, 1)
    fq = torch.tensor([0.0, 3.0]).view(1, 1, 2, 1)
    fk = torch.tensor([0.5, 9.0]).view(1, 1, 2, 1)
    gamma = torch.tensor([0.25])
    o, st = R.hybrid_window_attention(q, k, v, fq, fk, gamma, window=1, eps=0.0)
    expected_1 = (0.25 * 7.0 + 3.0 * 0.5 * 2.0) / (0.25 + 3.0 * 0.5)
    torch.testing.assert_close(o.flatten(), torch.tensor([2.0, expected_1]))
    torch.testing.assert_close(st.kv.flatten(), torch.tensor([1.0]))  # only token 0 has left the window
    torch.testing.assert_close(st.window_v.flatten(), torch.tensor([7.0]))
    assert st.window_mask.tolist() == [[True]]


def test_gated_hand_computed():
    q = torch.ones(1, 1, 2, 1)
    k = torch.tensor([1.0, 1.0]).view(1, 1, 2, 1)
    v = torch.tensor([4.0, 1.0]).view(1, 1, 2, 1)
    g = torch.tensor([-10.0, math.log(0.5)]).view(1, 1, 2, 1)  # the first decay acts on an empty state
    o, st = R.gated_linear_attention(q, k, v, g, scale=2.0)
    torch.testing.assert_close(o.flatten(), torch.tensor([8.0, 2.0 * (0.5 * 4.0 + 1.0)]))
    torch.testing.assert_close(st.kv.flatten(), torch.tensor([3.0]))


def test_noncausal_matches_direct_formula_and_ignores_padding():
    x = _inputs()
    fq, fk, v = x["fq"], x["fk"], x["v"]
    mask = _left_padding()
    o, st = R.noncausal_linear_attention(fq, fk, v, attention_mask=mask)
    for b in range(B):
        real = mask[b]
        kv = fk[b][:, real].transpose(-1, -2) @ v[b][:, real]
        z = fk[b][:, real].sum(1)
        expected = (fq[b] @ kv) / (fq[b] @ z.unsqueeze(-1) + 1e-6)
        torch.testing.assert_close(o[b][:, real], expected[:, real])
        assert (o[b][:, ~real] == 0).all()
        torch.testing.assert_close(st.kv[b], kv)


@pytest.mark.parametrize("window", [13, 100])
def test_hybrid_and_sliding_with_full_window_equal_causal_softmax(window):
    x = _inputs(dtype=torch.float32)
    q, k, v = x["q"], x["k"], x["v"]
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    o, _ = R.hybrid_window_attention(q, k, v, x["fq"], x["fk"], x["gamma"].float(), window=window)
    torch.testing.assert_close(o, sdpa, atol=1e-4, rtol=1e-4)
    o, _ = R.sliding_window_attention(q, k, v, window=window)
    torch.testing.assert_close(o, sdpa, atol=1e-5, rtol=1e-5)


def test_sliding_window_matches_banded_sdpa():
    x = _inputs(dtype=torch.float32)
    i = torch.arange(T)
    band = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 4)
    sdpa = F.scaled_dot_product_attention(x["q"], x["k"], x["v"], attn_mask=band)
    o, _ = R.sliding_window_attention(x["q"], x["k"], x["v"], window=4)
    torch.testing.assert_close(o, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(OPS))
def test_left_padding_stays_out_of_output_and_state(name):
    """A left-padded row, even with garbage in its padding, gives the unpadded row's outputs and state."""
    quad, rec, names, kw = OPS[name]
    x = _inputs()
    pad = 4
    mask = _left_padding(pad=(0, pad))
    args = [x[n].clone() for n in names]
    for a in args:
        if a.dim() == 4:
            a[1, :, :pad] = 1e4  # garbage that would dominate any output it leaked into
    o, st = quad(*args, attention_mask=mask, **kw)
    alone = [a[1:, :, pad:] if a.dim() == 4 else a for a in args]
    o_alone, st_alone = quad(*alone, **kw)
    torch.testing.assert_close(o[1:, :, pad:], o_alone)
    assert (o[1, :, :pad] == 0).all()
    for field, a, b in zip(st._fields, st, st_alone):
        if a is None:
            continue
        if field.startswith("window"):  # slots are by position: compare the real (unmasked) ones
            keep = st.window_mask[1]
            a_real = a[1][..., keep, :] if a.dim() == 4 else a[1][keep]
            b_real = b[0][..., st_alone.window_mask[0], :] if b.dim() == 4 else b[0][st_alone.window_mask[0]]
            torch.testing.assert_close(a_real, b_real, msg=field)
        else:
            torch.testing.assert_close(a[1], b[0], msg=field)


@pytest.mark.parametrize("name", list(OPS))
def test_two_halves_equal_whole(name):
    quad, _, names, kw = OPS[name]
    x = _inputs()
    args = [x[n] for n in names]
    cut = 6
    o_whole, s_whole = quad(*args, **kw)
    first = [a[:, :, :cut] if a.dim() == 4 else a for a in args]
    second = [a[:, :, cut:] if a.dim() == 4 else a for a in args]
    o1, s1 = quad(*first, **kw)
    o2, s2 = quad(*second, initial_state=s1, **kw)
    torch.testing.assert_close(torch.cat([o1, o2], 2), o_whole)
    _states_close(s2, s_whole)


STEPS = {
    "causal_linear": (R.causal_linear_attention, R.causal_linear_attention_step, ("fq", "fk", "v"), (), {}),
    "hybrid": (R.hybrid_window_attention, R.hybrid_window_attention_step, ("q", "k", "v", "fq", "fk"), ("gamma",),
               {"window": 3}),
    "hybrid_sinks": (R.hybrid_window_attention, R.hybrid_window_attention_step, ("q", "k", "v", "fq", "fk"),
                     ("gamma",), {"window": 3, "sinks": 2}),
    "gated": (R.gated_linear_attention, R.gated_linear_attention_step, ("fq", "fk", "v", "log_decay"), (),
              {"normalize": True, "scale": 0.7}),
    "sliding": (R.sliding_window_attention, R.sliding_window_attention_step, ("q", "k", "v"), (), {"window": 3}),
}


@pytest.mark.parametrize("name", list(STEPS))
@pytest.mark.parametrize("prefix", [0, 2, 8])
def test_steps_continue_a_prefix(name, prefix):
    full, step, seq_names, extra_names, kw = STEPS[name]
    x = _inputs()
    seqs = [x[n] for n in seq_names]
    extra = [x[n] for n in extra_names]
    o_full, s_full = full(*seqs, *extra, **kw)
    state = full(*[s[:, :, :prefix] for s in seqs], *extra, **kw)[1] if prefix else None
    outs = [o_full[:, :, :prefix]]
    for t in range(prefix, T):
        o, state = step(*[s[:, :, t:t + 1] for s in seqs], *extra, state, **kw)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), o_full)
    _states_close(state, s_full)


def test_outputs_keep_v_dtype_and_states_are_float32():
    x = _inputs(dtype=torch.bfloat16)
    o, st = R.hybrid_window_attention(x["q"], x["k"], x["v"], x["fq"], x["fk"], x["gamma"], window=4)
    assert o.dtype == torch.bfloat16 and st.kv.dtype == torch.float32 and st.window_k.dtype == torch.bfloat16
    o, st = R.gated_linear_attention(x["fq"], x["fk"], x["v"], x["log_decay"])
    assert o.dtype == torch.bfloat16 and st.kv.dtype == torch.float32


def test_hybrid_gradcheck_through_row_max():
    x = _inputs(T=5)
    args = [x[n][:1, :1].clone().requires_grad_() for n in ("q", "k", "v", "fq", "fk")]
    gamma = x["gamma"][:1].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: R.hybrid_window_attention(*a, window=2)[0], (*args, gamma))
