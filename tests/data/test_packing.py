"""Packing: bins respect the budget, and a packed forward/backward equals the unpacked one sample by sample."""

import random

import pytest
import torch
from datasets import Dataset

from hf_effi.data import PackedCollator, pack, pack_bins
from hf_effi.losses import patch_linear_cross_entropy
from hf_effi.testing import tiny_model


def _samples(lengths, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, vocab, (n,), generator=g).tolist()} for n in lengths]


@pytest.mark.parametrize("strategy", ["ffd", "greedy"])
def test_bins_hold_every_sample_once_within_budget(strategy):
    rng = random.Random(0)
    lengths = [rng.choice([3, 5, 17, 40, 64, 90, 128]) for _ in range(300)]
    bins = pack_bins(lengths, 128, strategy)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) >= lower_bound
    if strategy == "greedy":
        assert [i for b in bins for i in b] == list(range(300))  # keeps dataset order


def test_ffd_packs_tighter_than_greedy_and_matches_hand_case():
    assert pack_bins([6, 5, 4, 3, 2], 10, "ffd") == [[0, 2], [1, 3, 4]]
    assert pack_bins([6, 5, 4, 3, 2], 10, "greedy") == [[0], [1, 2], [3, 4]]
    rng = random.Random(1)
    lengths = [int(rng.paretovariate(1.2) * 8) % 200 + 1 for _ in range(500)]
    assert len(pack_bins(lengths, 256, "ffd")) <= len(pack_bins(lengths, 256, "greedy"))


def test_pack_rows_labels_positions_weights():
    rows = pack(_samples([4, 2, 3]), 6, loss_weighting="sequence")
    assert rows["seq_lengths"] == [[4, 2], [3]]
    assert rows["position_ids"] == [[0, 1, 2, 3, 0, 1], [0, 1, 2]]
    assert [lab[0] for lab in rows["labels"]] == [-100, -100] and rows["labels"][0][4] == -100
    w = rows["token_weights"][0]
    assert w[:4] == [1 / 3] * 4 and w[4:] == [1.0, 1.0]  # 3 and 1 trained tokens


def test_prompt_labels_are_kept():
    rows = pack([{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}], 8)
    assert rows["labels"] == [[-100, -100, 7, 8]]


def _per_sample_reference(model, samples):
    logits, losses, counts = [], [], 0
    total = 0.0
    for s in samples:
        ids = torch.tensor([s["input_ids"]])
        out = model(input_ids=ids, use_cache=False)
        logits.append(out.logits[0])
        lp = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:], reduction="sum")
        losses.append(lp / (len(s["input_ids"]) - 1))
        total = total + lp
        counts += len(s["input_ids"]) - 1
    return logits, total / counts, torch.stack(losses).mean()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_forward_backward_equals_unpacked(arch):
    model = tiny_model(arch)
    samples = _samples([5, 9, 3, 7])
    ref_logits, ref_token_mean, _ = _per_sample_reference(model, samples)
    ref_token_mean.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    rows = pack(samples, 16)
    batch = PackedCollator()(list(rows))
    out = model(**batch, use_cache=False)
    order = [len(s["input_ids"]) for s in samples]
    offsets, row_of = {}, {}
    for r, lengths in enumerate(rows["seq_lengths"]):
        start = 0
        for n in lengths:
            idx = next(i for i, m in enumerate(order) if m == n and i not in offsets)
            offsets[idx], row_of[idx] = start, r
            start += n
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        got = out.logits[row_of[i], offsets[i]: offsets[i] + n]
        torch.testing.assert_close(got, ref_logits[i], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, ref_token_mean, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_sequence_weighting_is_mean_of_sample_means():
    model = tiny_model("llama")
    samples = _samples([4, 12, 6])
    _, token_mean, sample_mean = _per_sample_reference(model, samples)
    batch = PackedCollator()(list(pack(samples, 32, loss_weighting="sequence")))
    patch_linear_cross_entropy(model)
    model.train()
    loss = model(**batch, use_cache=False).loss
    torch.testing.assert_close(loss, sample_mean, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, token_mean)


def test_collator_pads_as_a_separate_segment_and_returns_cu_seqlens():
    rows = list(pack(_samples([3, 5, 2]), 5, strategy="greedy"))
    batch = PackedCollator(pad_token_id=0, return_flash_attn_kwargs=True)(rows)
    assert batch["input_ids"].shape == (3, 5) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1]
    assert batch["labels"][2].tolist()[2:] == [-100] * 3
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 10, 12, 15] and batch["max_length_q"] == 5


def test_trainer_with_sequence_weighting(tmp_path):
    from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

    ds = pack(Dataset.from_list(_samples([3, 8, 5, 11, 4, 6, 9, 2])), 16, loss_weighting="sequence")
    args = EffiTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=2,
        report_to=[], save_strategy="no", use_cpu=True, effi_linear_cross_entropy=True, remove_unused_columns=True,
    )
    trainer = EffiTrainer(model=tiny_model("llama"), args=args, train_dataset=ds, data_collator=PackedCollator())
    batches = [PackedCollator()([r]) for r in list(ds)[:2]]
    expected = sum((b["token_weights"][..., 1:] * b["labels"][..., 1:].ne(-100)).sum() for b in batches)
    torch.testing.assert_close(trainer._get_num_items_in_batch(batches, torch.device("cpu")), expected)
    assert trainer.train().training_loss > 0


def test_bad_input():
    with pytest.raises(ValueError, match="max_length=4"):
        pack(_samples([3, 6]), 4)
    assert pack(_samples([3, 6]), 4, overflow="truncate")["seq_lengths"] == [[4], [3]]
    for kwargs, match in [
        (dict(strategy="best"), "strategy"),
        (dict(overflow="split"), "overflow"),
        (dict(loss_weighting="sample"), "loss_weighting"),
    ]:
        with pytest.raises(ValueError, match=match):
            pack(_samples([3]), 8, **kwargs)
    with pytest.raises(ValueError, match="max_length"):
        pack(_samples([3]), 1)
    with pytest.raises(ValueError, match="text"):
        pack(Dataset.from_list([{"text": "a"}]), 8)
    with pytest.raises(ValueError, match="labels"):
        pack([{"input_ids": [1, 2], "labels": [1]}], 8)
