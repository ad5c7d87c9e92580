"""Token-weighted held-out NLL and perplexity against hand computations."""

import math

import pytest
import torch
from torch import nn

from hf_effi.testing import tiny_model
from hf_effi.utils.eval import mean_loss, perplexity


class _Bigram(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next-token distribution depends on the current token only."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return self.table[input_ids]  # [B, T, V]


TABLE = [[0.0, 1.0, 2.0], [3.0, 0.0, -1.0], [0.5, 0.5, 0.0]]


def _nll_by_hand(prev: int, nxt: int) -> float:
    row = TABLE[prev]
    return math.log(sum(math.exp(v) for v in row)) - row[nxt]


def test_mean_loss_and_perplexity_by_hand():
    model = _Bigram(torch.tensor(TABLE))
    rows = [{"input_ids": [0, 1, 2, 0]}, {"input_ids": [2, 2]}, {"input_ids": torch.tensor([1, 0, 1])}]
    pairs = [(0, 1), (1, 2), (2, 0), (2, 2), (1, 0), (0, 1)]
    expected = sum(_nll_by_hand(a, b) for a, b in pairs) / len(pairs)  # token-weighted, not a mean of row means
    for batch_size in (1, 2, 8):
        assert mean_loss(model, rows, batch_size=batch_size) == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, rows) == pytest.approx(math.exp(expected), rel=1e-6)


def test_labels_minus_100_and_attention_mask_are_ignored():
    model = _Bigram(torch.tensor(TABLE))
    rows = [
        {"input_ids": [0, 1, 2, 0], "labels": [-100, -100, 2, 0]},  # predicts only 1->2 and 2->0
        {"input_ids": [1, 0, 2], "attention_mask": [1, 1, 0]},  # predicts only 1->0
    ]
    expected = (_nll_by_hand(1, 2) + _nll_by_hand(2, 0) + _nll_by_hand(1, 0)) / 3
    assert mean_loss(model, rows, batch_size=2) == pytest.approx(expected, rel=1e-6)


def test_uniform_model_has_perplexity_vocab_size():
    model = _Bigram(torch.zeros(5, 5))
    rows = [{"input_ids": [1, 2, 3, 4, 0]}] * 3
    assert perplexity(model, rows) == pytest.approx(5.0, rel=1e-6)


def test_max_batches_limits_the_rows_read():
    model = _Bigram(torch.tensor(TABLE))
    rows = [{"input_ids": [0, 1]}, {"input_ids": [1, 2]}]
    assert mean_loss(model, rows, batch_size=1, max_batches=1) == pytest.approx(_nll_by_hand(0, 1), rel=1e-6)


def test_llama_padded_batches_equal_per_row_computation():
    model = tiny_model("llama", vocab_size=97).train()
    gen = torch.Generator().manual_seed(1)
    rows = [{"input_ids": torch.randint(0, 97, (n,), generator=gen)} for n in (5, 9, 3, 12)]
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = row["input_ids"][None]
            logp = torch.log_softmax(model.eval()(input_ids=ids).logits[0, :-1].double(), dim=-1)
            total -= logp.gather(1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    model.train()
    assert mean_loss(model, rows, batch_size=3) == pytest.approx(total / count, rel=1e-5)
    assert model.training  # mode restored


def test_eval_mode_is_restored_too():
    model = _Bigram(torch.tensor(TABLE)).eval()
    mean_loss(model, [{"input_ids": [0, 1]}])
    assert not model.training


@pytest.mark.parametrize(
    "kwargs, rows, match",
    [
        ({"batch_size": 0}, [{"input_ids": [0, 1]}], "batch_size=0"),
        ({"max_batches": 0}, [{"input_ids": [0, 1]}], "max_batches=0"),
        ({}, [{"ids": [0, 1]}], "must be a mapping with 'input_ids'"),
        ({}, [{"input_ids": [0]}], "no predicted tokens"),
        ({}, [{"input_ids": [0, 1], "labels": [0]}], "one length"),
    ],
    ids=["batch_size", "max_batches", "no_input_ids", "too_short", "length_mismatch"],
)
def test_bad_input_raises_clear_errors(kwargs, rows, match):
    with pytest.raises(ValueError, match=match):
        mean_loss(_Bigram(torch.tensor(TABLE)), rows, **kwargs)
