"""GradNormLogger: pre-clip l2 and l1 norms of the accumulated gradient, inside Trainer, with and without clipping."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_effi.schedules import refine
from hf_effi.testing import tiny_model
from hf_effi.trainers.grad_norm_logger import GradNormLogger


def identical_rows(n=8, length=16):
    ids = torch.randint(1, 256, (length,), generator=torch.Generator().manual_seed(3)).tolist()
    return [{"input_ids": ids, "labels": ids} for _ in range(n)]


def expected_norms(model, row):
    """Every row is the same, so the accumulated mean gradient of any batch is this one row's gradient."""
    model = copy.deepcopy(model)
    ids = torch.tensor([row["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return (
        torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt().item(),
        torch.stack([g.abs().sum() for g in grads]).sum().item(),
    )


def train(tmp_path, max_grad_norm):
    model = tiny_model("llama", seed=1)
    data = identical_rows()
    l2, l1 = expected_norms(model, data[0])
    args = TrainingArguments(
        str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=0.0,
        weight_decay=0.0,
        max_grad_norm=max_grad_norm,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    logger = GradNormLogger(tmp_path / "norms.jsonl")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[logger])
    trainer.train()
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    return logger, (l2, l1), logged


def test_pre_clip_norms_are_recovered_when_trainer_clips(tmp_path):
    logger, (l2, l1), logged = train(tmp_path, max_grad_norm=1e-3)
    assert l2 > 100 * 1e-3  # so Trainer really clipped before on_pre_optimizer_step
    assert [r["step"] for r in logger.records] == [1, 2]
    for record, trainer_norm in zip(logger.records, logged):
        assert record["grad_norm_l2"] == pytest.approx(l2, rel=1e-4)
        assert record["grad_norm_l2"] == pytest.approx(trainer_norm, rel=1e-5)  # Trainer's own pre-clip l2
        assert record["grad_norm_l1"] == pytest.approx(l1, rel=1e-4)
    assert logger._handles == []  # hooks removed at the end of training
    rows = [json.loads(line) for line in (tmp_path / "norms.jsonl").read_text().splitlines()]
    assert rows == logger.records
    assert refine(tmp_path / "norms.jsonl")["grad_norms"] == [r["grad_norm_l1"] for r in rows]


def test_without_clipping_norms_come_from_the_gradients(tmp_path):
    logger, (l2, l1), _ = train(tmp_path, max_grad_norm=0.0)
    assert logger._handles == [] and len(logger.records) == 2
    for record in logger.records:
        assert record["grad_norm_l2"] == pytest.approx(l2, rel=1e-4)
        assert record["grad_norm_l1"] == pytest.approx(l1, rel=1e-4)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(fp16=True, world_size=1), "loss-scaled gradients"),
        (dict(fp16=False, world_size=2), "local gradient before DDP averages it"),
    ],
)
def test_refuses_setups_where_the_pre_clip_norm_is_unknowable(settings, message):
    args = SimpleNamespace(max_grad_norm=1.0, **settings)
    with pytest.raises(ValueError, match=message):
        GradNormLogger().on_train_begin(args, None, None, model=tiny_model("llama"))
    # Without clipping the gradients read at on_pre_optimizer_step are already final: allowed.
    GradNormLogger().on_train_begin(SimpleNamespace(max_grad_norm=0.0, **settings), None, None, model=None)


def test_refuses_layerwise_updates():
    args = SimpleNamespace(max_grad_norm=1.0, fp16=False, world_size=1, effi_optim_args={"layerwise": True})
    with pytest.raises(ValueError, match="layerwise=True"):
        GradNormLogger().on_train_begin(args, None, None, model=tiny_model("llama"))
