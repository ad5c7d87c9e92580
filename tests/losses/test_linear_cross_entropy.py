"""The chunked linear cross-entropy equals the plain loss and its gradients, and never holds the full logits."""

import pytest
import torch

from hf_effi.losses import linear_cross_entropy, linear_cross_entropy_reference
from hf_effi.utils.memory import saved_activation_bytes


def _inputs(n=37, d=16, vocab=101, dtype=torch.float32, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(vocab, d, generator=g) * 0.3).to(dtype).requires_grad_()
    b = (torch.randn(vocab, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::5] = -100
    return hidden, weight, b, labels


def _grads(fn, hidden, weight, bias, labels, **kw):
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    loss = fn(hidden, weight, labels, bias=bias, **kw)
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), [t.grad.clone() for t in (hidden, weight, bias) if t is not None]


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_plain_loss_and_gradients(chunk_size, bias):
    hidden, weight, b, labels = _inputs(bias=bias)
    ref_loss, ref_grads = _grads(linear_cross_entropy_reference, hidden, weight, b, labels)
    loss, grads = _grads(linear_cross_entropy, hidden, weight, b, labels, chunk_size=chunk_size)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_equals_torch_cross_entropy_on_logits():
    hidden, weight, _, labels = _inputs()
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, labels, ignore_index=-100)
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, labels, chunk_size=4), expected)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions(reduction):
    hidden, weight, _, labels = _inputs()
    ref, ref_grads = _grads(linear_cross_entropy_reference, hidden, weight, None, labels, reduction=reduction)
    got, grads = _grads(linear_cross_entropy, hidden, weight, None, labels, reduction=reduction, chunk_size=6)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    if reduction == "none":
        assert got.shape == labels.shape and (got[labels == -100] == 0).all()


def test_token_weights_softcap_and_num_items():
    hidden, weight, _, labels = _inputs()
    w = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3))
    kw = dict(token_weights=w, softcap=2.0)
    ref, ref_grads = _grads(linear_cross_entropy_reference, hidden, weight, None, labels, **kw)
    got, grads = _grads(linear_cross_entropy, hidden, weight, None, labels, chunk_size=5, **kw)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    valid = labels != -100
    per_token = linear_cross_entropy(hidden, weight, labels, reduction="none", softcap=2.0)
    torch.testing.assert_close(got, (per_token * w).sum() / (w * valid).sum())
    by_items = linear_cross_entropy(hidden, weight, labels, num_items_in_batch=100)
    torch.testing.assert_close(by_items, linear_cross_entropy(hidden, weight, labels, reduction="sum") / 100)


def test_batched_shape_and_bf16_inputs():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 9, 16, generator=g).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(50, 16, generator=g) * 0.3).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 50, (2, 9), generator=g)
    loss = linear_cross_entropy(hidden, weight, labels, chunk_size=4)
    ref = linear_cross_entropy_reference(hidden, weight, labels)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)  # both upcast to fp32 before the softmax
    loss.backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16


def test_saved_memory_is_independent_of_vocab_logits():
    n, d, vocab = 256, 32, 4096
    hidden = torch.randn(n, d, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(vocab, d) * 0.1)
    labels = torch.randint(0, vocab, (n,))
    plain = saved_activation_bytes(lambda: linear_cross_entropy_reference(hidden, weight, labels))
    chunked = saved_activation_bytes(lambda: linear_cross_entropy(hidden, weight, labels, chunk_size=64))
    assert plain >= n * vocab * 4  # the fp32 logits (or their log-softmax) are kept for backward
    # hidden + int64 labels + two fp32 per-token statistics (log-sum-exp, weight); never a [n, vocab] tensor
    assert chunked <= n * d * 4 + n * (8 + 4 + 4) + 64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(reduction="avg"), "reduction"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(reduction="sum", num_items_in_batch=3), "num_items_in_batch"),
        (dict(token_weights=torch.ones(3)), "token_weights"),
    ],
)
def test_bad_input(kwargs, match):
    hidden, weight, _, labels = _inputs()
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(hidden, weight, labels, **kwargs)


def test_bad_shapes():
    hidden, weight, _, labels = _inputs()
    with pytest.raises(ValueError, match="lm_head_weight"):
        linear_cross_entropy(hidden, weight[:, :4], labels)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(hidden, weight, labels[:3])
    with pytest.raises(ValueError, match="integer"):
        linear_cross_entropy(hidden, weight, labels.float())
