"""InfoBatch: pruning math, unbiased weights, the plan known in advance, and InfoBatchTrainer inside Trainer
(step count = scheduler total, gradient accumulation, resume, evaluation untouched, bad input)."""

import math

import pytest
import torch
from datasets import Dataset

from hf_effi.testing import tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments
from hf_effi.trainers.infobatch import InfoBatchArguments, InfoBatchTrainer, causal_lm_sample_losses
from hf_effi.trainers.infobatch_sampler import InfoBatchSampler, num_pruned_per_epoch, plan_epoch

N_ROWS, SEQ = 32, 16


def rows(n=N_ROWS, seed=0):
    # half the rows repeat one short pattern (easy, learned fast), half are random (hard): a real loss spread
    g = torch.Generator().manual_seed(seed)
    easy = (torch.arange(SEQ) % 4).repeat(n // 2, 1)
    hard = torch.randint(0, 64, (n - n // 2, SEQ), generator=g)
    ids = torch.cat([easy, hard])
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def args(out, **over):
    kwargs = dict(
        num_train_epochs=4, infobatch_delta=0.75, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1,
        effi_optim="adamw", effi_schedule="cosine", seed=0,
    )  # fmt: skip
    kwargs.update(over)
    return InfoBatchArguments(str(out), **kwargs)


def train(out, resume=None, **over):
    trainer = InfoBatchTrainer(model=tiny_model("llama", vocab_size=64), args=args(out, **over), train_dataset=rows())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --- the pruning math ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,ratio,multiple,expected",
    [(100, 0.5, 1, 25), (100, 0.5, 8, 20), (100, 0.0, 1, 0), (101, 0.3, 4, 13), (10, 0.5, 8, 2), (12, 0.25, 8, 0)],
)
def test_num_pruned_is_r_of_half_rounded_to_whole_batches(n, ratio, multiple, expected):
    k = num_pruned_per_epoch(n, ratio, multiple)
    assert k == expected
    assert k <= math.floor(ratio * (n // 2))
    assert k == 0 or (n - k) % multiple == 0


def test_plan_prunes_only_well_learned_and_weights_the_kept_ones():
    scores = torch.linspace(0.0, 3.0, 40)[torch.randperm(40)]
    order, weights, info = plan_epoch(scores, 5, 0.5, torch.Generator().manual_seed(0))
    below = set((scores < scores.mean()).nonzero().flatten().tolist())
    kept = set(order.tolist())
    pruned = set(range(40)) - kept
    assert len(order) == len(kept) == 35 and len(pruned) == 5
    assert pruned <= below  # only well-learned samples are left out
    assert info["well_learned"] == len(below) == 20
    for i in range(40):  # kept well-learned samples carry |W| / (|W| - K); all others 1
        assert weights[i] == pytest.approx(20 / 15 if i in below and i in kept else 1.0)


def test_weighted_pruned_gradient_is_unbiased():
    # per-sample gradients g_i; E over the random prune of sum_kept w_i g_i must equal sum_all g_i
    torch.manual_seed(0)
    n, k, draws = 24, 5, 4000
    scores, grads = torch.rand(n), torch.randn(n, 3)
    total = torch.zeros(3)
    counts = torch.zeros(n)
    for d in range(draws):
        order, weights, _ = plan_epoch(scores, k, 0.5, torch.Generator().manual_seed(d))
        total += (weights[order, None] * grads[order]).sum(0)
        counts[order] += weights[order]
    # each sample's expected weight is exactly 1: 4000 draws put the average within a few % of it
    assert torch.allclose(counts / draws, torch.ones(n), atol=0.06)
    assert torch.allclose(total / draws, grads.sum(0), atol=0.15 * grads.abs().sum(0).max())


def test_well_learned_set_is_topped_up_so_no_sample_is_pruned_above_r():
    scores = torch.full((20,), 5.0)
    scores[0] = 0.0  # one outlier: the only sample below the mean
    order, weights, info = plan_epoch(scores, 4, 0.5, torch.Generator().manual_seed(0))
    assert info["below_mean"] == 1 and info["well_learned"] == 8  # ceil(K / r)
    assert len(order) == 16 and weights.max() == pytest.approx(8 / 4)


def test_unscored_samples_are_never_pruned():
    scores = torch.rand(20)
    scores[:6] = float("nan")
    for seed in range(20):
        order, _, _ = plan_epoch(scores, 4, 0.5, torch.Generator().manual_seed(seed))
        assert set(range(6)) <= set(order.tolist())


def test_epoch_plan_first_full_then_pruned_then_annealing():
    sampler = InfoBatchSampler(100, num_epochs=8, prune_ratio=0.5, delta=0.875, batch_multiple=5)
    assert sampler.num_pruned == 25
    assert sampler.epoch_sizes() == [100] + [75] * 6 + [100]  # epoch 0 unscored, epoch 7 = 1 - delta anneals
    sampler.update_scores(torch.arange(100), torch.rand(100))
    for epoch in range(8):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == sampler.epoch_sizes()[epoch] and len(set(order)) == len(order)
        if epoch == 7:
            assert torch.equal(sampler.weights, torch.ones(100))


def test_same_seed_same_plan_on_every_process():
    a, b = (InfoBatchSampler(50, num_epochs=3, seed=3) for _ in range(2))
    for s in (a, b):
        s.update_scores(torch.arange(50), torch.linspace(0, 1, 50))
        s.set_epoch(1)
    assert list(a) == list(b) and torch.equal(a.weights, b.weights)


def test_per_sample_loss_averages_to_the_model_loss():
    model = tiny_model("llama", vocab_size=64)
    ids = torch.randint(0, 64, (3, SEQ))
    labels = ids.clone()
    labels[1, :5] = -100
    out = model(input_ids=ids)
    losses, counts = causal_lm_sample_losses(out.logits, labels)
    assert counts.tolist() == [SEQ - 1, SEQ - 5, SEQ - 1]  # labels 1..4 masked; label 0 is never predicted
    token_weighted = (losses * counts).sum() / counts.sum()
    assert token_weighted.item() == pytest.approx(model(input_ids=ids, labels=labels).loss.item(), rel=1e-5)


# --- inside Trainer -----------------------------------------------------------------------------------------------


def test_step_count_equals_scheduler_total_and_schedule_ends_with_training(tmp_path):
    trainer = train(tmp_path, effi_schedule=None, lr_scheduler_type="linear")
    # 32 rows, global batch 8, K = floor(0.5 * 16) = 8: epochs of 32, 24, 24, 32 rows = 4 + 3 + 3 + 4 steps
    assert [h["samples"] for h in trainer.infobatch_sampler.history] == [32, 24, 24, 32]
    assert trainer.state.global_step == trainer.state.max_steps == 14
    assert trainer.lr_scheduler.last_epoch == 14
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert len(lrs) == 14 and lrs[-1] > 0  # every step trained with a positive rate ...
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0  # ... and the linear schedule hits 0 exactly at the end
    assert trainer.infobatch_samples_trained == 112
    assert trainer.state.epoch == 4.0


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    big = train(tmp_path / "a", per_device_train_batch_size=4, gradient_accumulation_steps=2)
    accumulated = train(tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=4)
    assert big.infobatch_sampler.history == accumulated.infobatch_sampler.history
    assert torch.allclose(flat(big.model), flat(accumulated.model), atol=1e-5)
    assert big.state.global_step == accumulated.state.global_step == 14


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", [5, 7], ids=["mid-pruning-epoch", "before-a-pruning-epoch"])
def test_resume_equals_uninterrupted(tmp_path, checkpoint):
    # epochs of 4, 3, 3, 4 steps: step 5 is inside epoch 1 (its saved order is replayed), step 7 ends it (epoch 2's
    # plan is drawn from the restored scores)
    full = train(tmp_path, save_strategy="steps", save_steps=checkpoint)
    resumed = train(tmp_path, resume=str(tmp_path / f"checkpoint-{checkpoint}"), save_strategy="steps",
                    save_steps=checkpoint)  # fmt: skip
    assert resumed.state.global_step == full.state.global_step == 14
    assert torch.equal(flat(resumed.model), flat(full.model))
    assert torch.equal(resumed.infobatch_sampler.scores, full.infobatch_sampler.scores)
    assert resumed.infobatch_sampler.history == full.infobatch_sampler.history


def test_evaluate_is_unpruned_and_unweighted(tmp_path):
    eval_rows = rows(16, seed=1)
    trainer = train(tmp_path, num_train_epochs=3, infobatch_delta=1.0)
    assert trainer.infobatch_sampler.is_pruning_epoch(2)  # training ended inside a pruning epoch
    scores, trained = trainer.infobatch_sampler.scores.clone(), trainer.infobatch_samples_trained
    plain_args = EffiTrainingArguments(str(tmp_path / "plain"), per_device_eval_batch_size=4, report_to="none",
                                       use_cpu=True, disable_tqdm=True)  # fmt: skip
    plain = EffiTrainer(model=trainer.model, args=plain_args)
    ours, theirs = trainer.evaluate(eval_rows), plain.evaluate(eval_rows)
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-6)
    assert torch.allclose(trainer.infobatch_sampler.scores, scores, equal_nan=True)
    assert trainer.infobatch_samples_trained == trained


def test_zero_ratio_never_prunes(tmp_path):
    trainer = train(tmp_path, infobatch_prune_ratio=0.0)
    assert [h["samples"] for h in trainer.infobatch_sampler.history] == [32] * 4
    assert trainer.state.global_step == 16


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, True, "0.5"])
def test_prune_ratio_outside_0_1_is_refused(tmp_path, ratio):
    with pytest.raises(ValueError, match="infobatch_prune_ratio must be in \\[0, 1\\)"):
        args(tmp_path, infobatch_prune_ratio=ratio)
    with pytest.raises(ValueError, match="infobatch_prune_ratio"):
        InfoBatchSampler(10, num_epochs=2, prune_ratio=ratio)


@pytest.mark.parametrize(
    "over,match",
    [
        ({"infobatch_delta": 1.2}, "infobatch_delta must be in \\[0, 1\\]"),
        ({"max_steps": 10}, "set num_train_epochs and leave max_steps unset"),
        ({"num_train_epochs": 2.5}, "whole number of epochs"),
    ],
)
def test_bad_arguments(tmp_path, over, match):
    with pytest.raises(ValueError, match=match):
        args(tmp_path, **over)


def test_plain_arguments_are_refused(tmp_path):
    plain = EffiTrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(TypeError, match="needs InfoBatchArguments"):
        InfoBatchTrainer(model=tiny_model("llama", vocab_size=64), args=plain, train_dataset=rows())


def test_ratio_too_small_for_the_batch_is_refused():
    with pytest.raises(ValueError, match="less than one global batch"):
        InfoBatchSampler(20, num_epochs=4, prune_ratio=0.1, batch_multiple=8)


def test_resume_from_a_foreign_checkpoint_is_refused(tmp_path):
    plain_args = EffiTrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to="none",
                                       use_cpu=True, disable_tqdm=True, save_strategy="steps", save_steps=2)  # fmt: skip
    EffiTrainer(model=tiny_model("llama", vocab_size=64), args=plain_args, train_dataset=rows()).train()
    with pytest.raises(ValueError, match="infobatch_state.pt"):
        train(tmp_path, resume=str(tmp_path / "checkpoint-2"))


def test_state_for_another_run_is_refused():
    state = InfoBatchSampler(40, num_epochs=4).state_dict()
    with pytest.raises(ValueError, match="resume with the same dataset"):
        InfoBatchSampler(40, num_epochs=5).load_state_dict(state)
