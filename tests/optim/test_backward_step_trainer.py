"""LayerwiseOptimizer inside a plain transformers ``Trainer``: same parameters as Trainer with torch AdamW.

Trainer's inner loop sets ``accelerator.sync_gradients`` before every micro-batch (True on the last one of each
window and on the epoch's last batch, so the short remainder window is covered); the sync source reads it.
"""

import math

import pytest
import torch
from transformers import LlamaForCausalLM, Trainer, TrainingArguments

from hf_effi.optim.backward_step import LayerwiseOptimizer
from hf_effi.testing import tiny_model

VOCAB = 128
N_SAMPLES = 10  # 5 batches of 2 per epoch: with GA=2 the windows are 2, 2, 1


def _tiny_llama() -> LlamaForCausalLM:
    return tiny_model("llama", vocab_size=VOCAB)


def _dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(N_SAMPLES):
        ids = torch.randint(0, VOCAB, (12,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def _groups(model):
    mats = [p for p in model.parameters() if p.ndim >= 2]
    vecs = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": mats, "lr": 1e-2, "weight_decay": 0.1}, {"params": vecs, "lr": 3e-3, "weight_decay": 0.0}]


def _adamw(groups):
    return torch.optim.AdamW(groups, foreach=False)  # single-tensor kernel on both sides: bit-exact comparison


def _run(tmp_path, ga: int, mode: str, max_grad_norm: float = 0.0, save_steps: int = 0, resume: str | None = None):
    """mode: 'plain' (torch AdamW), 'sync' (layer-wise + sync source), 'counter' (layer-wise, GA counter),
    'wrong' (layer-wise counting GA=1 whatever the Trainer does)."""
    model = _tiny_llama()
    if mode == "plain":
        optimizer = _adamw(_groups(model))
    else:
        counted = {"sync": 1, "counter": ga, "wrong": 1}[mode]
        optimizer = LayerwiseOptimizer(_groups(model), _adamw, gradient_accumulation_steps=counted)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    args = TrainingArguments(
        output_dir=str(tmp_path / f"{mode}-{ga}"), use_cpu=True, report_to="none",
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        per_device_train_batch_size=2, gradient_accumulation_steps=ga, num_train_epochs=2, logging_steps=1,
        max_grad_norm=max_grad_norm, seed=0, disable_tqdm=True, dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(), optimizers=(optimizer, scheduler))
    if mode == "sync":
        # TrainerCallback.on_train_begin gets model/optimizer/scheduler but not the trainer or its accelerator,
        # so bind after construction (EffiTrainer does this itself).
        optimizer.set_sync_source(lambda: trainer.accelerator.sync_gradients)
    trainer.train(resume_from_checkpoint=resume)
    grad_norms = [row["grad_norm"] for row in trainer.state.log_history if "grad_norm" in row]
    return model, optimizer, grad_norms, trainer.state.global_step


@pytest.mark.parametrize(("ga", "mode"), [(1, "counter"), (2, "sync"), (2, "counter")])
def test_trainer_layerwise_equals_trainer_adamw(tmp_path, ga, mode):
    ref_model, _, ref_norms, ref_steps = _run(tmp_path, ga, "plain")
    # max_grad_norm=1.0 on the layer-wise run only: Trainer's clipping finds no gradients and changes nothing.
    # Not in counter mode with GA=2: there the epoch's short remainder window is updated in step(), after Trainer
    # clipped the gradients still waiting (the sync source avoids that).
    clip = 0.0 if mode == "counter" and ga > 1 else 1.0
    lw_model, lw_opt, lw_norms, lw_steps = _run(tmp_path, ga, mode, max_grad_norm=clip)
    assert lw_steps == ref_steps == 2 * math.ceil(N_SAMPLES / 2 / ga)
    for (name, a), b in zip(ref_model.named_parameters(), lw_model.parameters()):
        assert torch.equal(a, b), f"{name} differs by {(a - b).abs().max().item():.3e}"
    # Plain Trainer logs 0 for a layer-wise optimizer (except for counter mode's remainder windows, whose gradients
    # wait for step()); last_grad_norm holds the true value.
    if mode != "counter" or ga == 1:
        assert set(lw_norms) == {0.0}
    assert lw_opt.last_grad_norm == pytest.approx(ref_norms[-1], rel=1e-6)
    assert ref_norms[-1] > 0


def test_trainer_ga_without_sync_source_or_matching_count_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="updated more than once since the last step"):
        _run(tmp_path, 2, "wrong")


def test_trainer_resume_restores_the_moments_exactly(tmp_path):
    full_model, _, _, _ = _run(tmp_path / "full", 2, "sync")
    _run(tmp_path / "saved", 2, "sync", save_steps=3)
    checkpoint = tmp_path / "saved" / "sync-2" / "checkpoint-3"
    assert (checkpoint / "optimizer.pt").is_file()
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    n_params = len(list(full_model.parameters()))
    assert sorted(state["state"]) == list(range(n_params))
    assert float(state["state"][0]["step"]) == 3.0
    resumed_model, _, _, _ = _run(tmp_path / "saved", 2, "sync", save_steps=3, resume=str(checkpoint))
    for (name, a), b in zip(full_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), f"{name} differs by {(a - b).abs().max().item():.3e}"
