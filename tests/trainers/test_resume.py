"""Trainer + hf_effi.make: a run interrupted at a checkpoint and resumed ends exactly where the uninterrupted run does."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

import hf_effi
from hf_effi.testing import tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

pytestmark = pytest.mark.slow

STEPS = 8


def tiny_llama():
    return tiny_model("llama", vocab_size=64)


def dataset():
    ids = torch.randint(0, 64, (48, 16), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


COMMON = dict(
    max_steps=STEPS,
    per_device_train_batch_size=4,
    save_strategy="steps",
    save_steps=4,
    use_cpu=True,
    report_to="none",
    seed=0,
    logging_steps=1,
    disable_tqdm=True,
    learning_rate=1e-2,
    weight_decay=0.1,
)


def run_plain_trainer(out, resume, *, optim, schedule, ga=1):
    model = tiny_llama()
    pair = hf_effi.make(optim, model, lr=1e-2, num_training_steps=STEPS, schedule=schedule, warmup=2, weight_decay=0.1)
    args = TrainingArguments(output_dir=str(out), gradient_accumulation_steps=ga, **COMMON)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(), optimizers=pair)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def run_effi_trainer(out, resume, *, optim, schedule, ga=1):
    args = EffiTrainingArguments(
        output_dir=str(out),
        gradient_accumulation_steps=ga,
        effi_optim=optim,
        effi_schedule=schedule,
        warmup_steps=2,
        **COMMON,
    )
    trainer = EffiTrainer(model=tiny_llama(), args=args, train_dataset=dataset())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


CASES = [
    ("trainer-adamw-wsd", run_plain_trainer, "adamw", "wsd", 1),
    ("trainer-adafactor-cosine-ga2", run_plain_trainer, "adafactor", "cosine", 2),
    ("effi-adamw-rex", run_effi_trainer, "adamw", "rex", 1),
    ("effi-sgd-linear-ga2", run_effi_trainer, "sgd", "linear", 2),
]


@pytest.mark.parametrize("name,runner,optim,schedule,ga", CASES, ids=[c[0] for c in CASES])
def test_resume_matches_uninterrupted(tmp_path, name, runner, optim, schedule, ga):
    full = runner(tmp_path / "full", None, optim=optim, schedule=schedule, ga=ga)
    ckpt = tmp_path / "full" / "checkpoint-4"
    assert (ckpt / "optimizer.pt").exists() and (ckpt / "scheduler.pt").exists()
    torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.load(ckpt / "scheduler.pt", weights_only=True)

    resumed = runner(tmp_path / "resumed", str(ckpt), optim=optim, schedule=schedule, ga=ga)
    assert resumed.state.global_step == STEPS
    full_params = dict(full.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        torch.testing.assert_close(p, full_params[n], rtol=0, atol=0, msg=f"{name}: {n} differs after resume")
    # The logged learning rates of the resumed half are the uninterrupted run's.
    lrs = lambda t: [h["learning_rate"] for h in t.state.log_history if "learning_rate" in h]  # noqa: E731
    assert lrs(resumed)[-4:] == lrs(full)[-4:]


def test_effi_trainer_uses_the_named_schedule(tmp_path):
    trainer = run_effi_trainer(tmp_path, None, optim="adamw", schedule="wsd")
    assert isinstance(trainer.optimizer.optimizer, torch.optim.AdamW)  # inside accelerate's wrapper
    assert trainer.lr_scheduler.name == "wsd"
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    expected = [1e-2 * m for m in trainer.lr_scheduler.values(STEPS)]
    # Trainer logs the lr each optimizer step used.
    assert lrs == pytest.approx(expected, abs=1e-15)
