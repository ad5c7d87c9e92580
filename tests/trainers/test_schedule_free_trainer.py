"""EffiTrainer + schedule-free: checkpoints hold the averaged x, resume is exact, decaying schedules refused."""

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_effi.optim.schedule_free import ScheduleFreeAdamW
from hf_effi.testing import tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

VOCAB = 64
STEPS = 8


def _dataset():
    start = torch.randint(0, VOCAB, (48, 1), generator=torch.Generator().manual_seed(0))
    ids = (start + torch.arange(16)) % VOCAB
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def _args(out, **overrides):
    kw = dict(
        output_dir=str(out),
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
        effi_optim="schedule_free_adamw",
        effi_schedule="constant",
        warmup_steps=2,
    )
    kw.update(overrides)
    return EffiTrainingArguments(**kw)


class _RecordAroundSave(TrainerCallback):
    """Before the save of step 4: the x the checkpoint must hold; after it: the optimizer's mode."""

    def __init__(self):
        self.expected_x, self.mode_after_save = None, None

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == 4:
            opt = optimizer.optimizer
            beta = opt.param_groups[0]["momentum"]
            # eval() computes x = lerp(y, z, 1 - 1/beta) in place; the same op on a copy gives the same bits
            self.expected_x = {n: p.detach().lerp(opt.state[p]["z"], 1 - 1 / beta) for n, p in model.named_parameters()}

    def on_save(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step == 4:
            self.mode_after_save = optimizer.optimizer.train_mode


def _train(out, resume=None, callbacks=()):
    trainer = EffiTrainer(
        model=tiny_model("llama", vocab_size=VOCAB),
        args=_args(out),
        train_dataset=_dataset(),
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.slow
def test_checkpoint_holds_eval_weights_and_resume_matches_uninterrupted(tmp_path):
    record = _RecordAroundSave()
    full = _train(tmp_path / "full", callbacks=[record])
    assert isinstance(full.optimizer.optimizer, ScheduleFreeAdamW)
    ckpt = tmp_path / "full" / "checkpoint-4"
    saved = load_file(ckpt / "model.safetensors")
    for n, x in record.expected_x.items():
        if n in saved:  # tied weights are saved once
            torch.testing.assert_close(saved[n], x, rtol=0, atol=0, msg=f"{n}: checkpoint is not the eval-mode x")
    assert record.mode_after_save is True  # switched back to train mode after saving
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert all(g["train_mode"] is False for g in state["param_groups"])

    resumed = _train(tmp_path / "resumed", resume=str(ckpt))
    ref = dict(full.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=0, atol=0, msg=f"{n} differs after resume")
    # after train() the model holds x, the final checkpoint's x up to the rounding of one eval->train->eval trip
    assert not full.optimizer.optimizer.train_mode
    final = load_file(tmp_path / "full" / f"checkpoint-{STEPS}" / "model.safetensors")
    for n, p in full.model.named_parameters():
        if n in final:
            torch.testing.assert_close(final[n], p.detach(), rtol=1e-5, atol=1e-6, msg=n)
    lrs = [h["learning_rate"] for h in full.state.log_history if "learning_rate" in h]
    assert lrs[2:] == [1e-2] * (STEPS - 2)  # two warmup steps, then constant


def test_save_model_outside_training_saves_x_and_restores_the_mode(tmp_path):
    trainer = EffiTrainer(model=tiny_model("llama", vocab_size=VOCAB), args=_args(tmp_path), train_dataset=_dataset())
    trainer.create_optimizer_and_scheduler(num_training_steps=STEPS)
    opt = trainer.optimizer
    ids = torch.arange(12).view(1, 12)
    trainer.model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    beta = opt.param_groups[0]["momentum"]
    x = {n: p.detach().lerp(opt.state[p]["z"], 1 - 1 / beta) for n, p in trainer.model.named_parameters()}
    trainer.save_model(str(tmp_path / "saved"))
    assert opt.train_mode
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    for n, v in x.items():
        if n in saved:
            torch.testing.assert_close(saved[n], v, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"effi_schedule": "cosine"}, "effi_schedule='cosine'"),
        ({"effi_schedule": None}, "lr_scheduler_type='linear'"),
        ({"effi_schedule": None, "effi_optim": "schedule_free_sgd", "lr_scheduler_type": "cosine"}, "cosine"),
    ],
    ids=["effi-cosine", "hf-default-linear", "sgd-hf-cosine"],
)
def test_decaying_schedule_is_refused_at_construction(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        EffiTrainer(
            model=tiny_model("llama", vocab_size=VOCAB), args=_args(tmp_path, **overrides), train_dataset=_dataset()
        )


def test_constant_with_warmup_hf_schedule_is_accepted(tmp_path):
    args = _args(tmp_path, effi_schedule=None, lr_scheduler_type="constant_with_warmup")
    EffiTrainer(model=tiny_model("llama", vocab_size=VOCAB), args=args, train_dataset=_dataset())
