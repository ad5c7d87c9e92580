"""Shared checks over the CAME / SPAM / LAMB / LARS matrix: training lowers held-out loss on a tiny Llama, layer-wise
mode gives the same parameters, gradient checkpointing changes nothing, and state resumes bit for bit (through a
``weights_only`` round trip and through Trainer's ``resume_from_checkpoint``)."""

import io

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

import hf_effi
import hf_effi.optim.came  # noqa: F401
import hf_effi.optim.lamb  # noqa: F401
import hf_effi.optim.lars  # noqa: F401
import hf_effi.optim.spam  # noqa: F401
from hf_effi.testing import tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments
from hf_effi.utils import mean_loss

VOCAB = 64
SPAM_SHORT = dict(reset_interval=3, rewarm_steps=2, clip_delay=1)  # a reset every 3 steps, so tests cross one

# (id, optimizer, kwargs incl. lr): lrs picked on this task; LARS's step is ~lr * 1e-3 * ||w||, hence lr=5
CASES = [
    ("came", "came", dict(lr=3e-3)),
    ("spam", "spam", dict(lr=1e-2, **SPAM_SHORT)),
    ("spam-sparse", "spam", dict(lr=1e-2, density=0.5, **SPAM_SHORT)),
    ("lamb", "lamb", dict(lr=3e-2)),
    ("lars", "lars", dict(lr=5.0)),
]
IDS = [c[0] for c in CASES]


def _sequences(seed: int, n: int) -> torch.Tensor:
    """Arithmetic progressions mod VOCAB (random start and stride 1-3): learnable from context, never memorised."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    return (start + stride * torch.arange(16)) % VOCAB


def _make(name, model, kwargs, steps, **extra):
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr")
    return hf_effi.make(name, model, lr=lr, num_training_steps=steps, weight_decay=0.01, **kwargs, **extra)


def _train(model, opt, sched, steps, batch=8):
    data = _sequences(1, 64)
    for i in range(steps):
        rows = data[(i * batch) % 64 : (i * batch) % 64 + batch]
        model(input_ids=rows, labels=rows).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lowers_held_out_loss(case):
    _, name, kwargs = case
    model = tiny_model("llama", vocab_size=VOCAB)
    held_out = [{"input_ids": row} for row in _sequences(2, 16)]
    before = mean_loss(model, held_out)
    _train(model, *_make(name, model, kwargs, 30), 30)
    after = mean_loss(model, held_out)
    assert after < 0.8 * before, f"{case[0]}: held-out loss {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layerwise_gives_the_same_parameters(case):
    _, name, kwargs = case
    plain, layerwise = tiny_model("llama", vocab_size=VOCAB), tiny_model("llama", vocab_size=VOCAB)
    _train(plain, *_make(name, plain, kwargs, 5), 5)
    opt, sched = _make(name, layerwise, kwargs, 5, layerwise=True)
    _train(layerwise, opt, sched, 5)
    opt.remove_hooks()
    for (n, a), b in zip(plain.named_parameters(), layerwise.parameters()):
        assert torch.equal(a, b), f"{case[0]}: {n} differs by {(a - b).abs().max().item():.3e}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_checkpointing_gives_the_same_parameters(case):
    _, name, kwargs = case
    plain, ckpt = tiny_model("llama", vocab_size=VOCAB), tiny_model("llama", vocab_size=VOCAB)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for model in (plain, ckpt):
        _train(model, *_make(name, model, kwargs, 4), 4)
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{case[0]}: {n}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_round_trip_continues_exactly(case):
    _, name, kwargs = case
    full, half = tiny_model("llama", vocab_size=VOCAB), tiny_model("llama", vocab_size=VOCAB)
    opt, sched = _make(name, full, kwargs, 8)
    _train(full, opt, sched, 8)
    opt, sched = _make(name, half, kwargs, 8)
    _train(half, opt, sched, 4)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "model": half.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = tiny_model("llama", vocab_size=VOCAB)
    resumed.load_state_dict(saved["model"])
    opt, sched = _make(name, resumed, kwargs, 8)
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    data = _sequences(1, 64)
    for i in range(4, 8):
        rows = data[(i * 8) % 64 : (i * 8) % 64 + 8]
        resumed(input_ids=rows, labels=rows).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    for (n, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"{case[0]}: {n}"


# --- through Trainer: checkpoint at step 4 of 8, resume, same parameters -------------------------------------------

STEPS = 8
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
)


def _dataset():
    ids = _sequences(3, 48)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def _run_trainer(out, resume, name, kwargs):
    model = tiny_model("llama", vocab_size=VOCAB)
    pair = _make(name, model, kwargs, STEPS, schedule="cosine", warmup=2)
    args = TrainingArguments(output_dir=str(out), **COMMON)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(), optimizers=pair)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _run_effi_layerwise(out, resume, name, kwargs):
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr")
    args = EffiTrainingArguments(
        output_dir=str(out),
        effi_optim=name,
        effi_optim_args={**kwargs, "layerwise": True},
        effi_schedule="cosine",
        warmup_steps=2,
        learning_rate=lr,
        weight_decay=0.01,
        **COMMON,
    )
    trainer = EffiTrainer(model=tiny_model("llama", vocab_size=VOCAB), args=args, train_dataset=_dataset())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


RESUME_CASES = [(c[0], _run_trainer, c[1], c[2]) for c in CASES] + [
    ("spam-sparse-layerwise-effi", _run_effi_layerwise, "spam", CASES[2][2]),
    ("lamb-layerwise-effi", _run_effi_layerwise, "lamb", CASES[3][2]),
]


@pytest.mark.slow
@pytest.mark.parametrize("case_id,runner,name,kwargs", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_trainer_resume_is_bit_for_bit(tmp_path, case_id, runner, name, kwargs):
    full = runner(tmp_path / "full", None, name, kwargs)
    ckpt = tmp_path / "full" / "checkpoint-4"
    torch.load(ckpt / "optimizer.pt", weights_only=True)
    resumed = runner(tmp_path / "resumed", str(ckpt), name, kwargs)
    assert resumed.state.global_step == STEPS
    full_params = dict(full.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        assert torch.equal(p, full_params[n]), f"{case_id}: {n} differs after resume"
