"""Trainer's resume_from_checkpoint continues bit for bit for every registered subspace optimizer (EffiTrainer,
effi_optim by name; the projection refreshes on both sides of the checkpoint)."""

import pytest
import torch
from datasets import Dataset

import hf_effi.optim.subspace  # noqa: F401  (registers the names)
from hf_effi.optim.subspace import SUBSPACE_OPTIMIZERS
from hf_effi.testing import tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

pytestmark = pytest.mark.slow

STEPS = 6
ARGS = {
    "galore_adamw": {"rank": 4, "update_proj_gap": 2},
    "fira_adamw": {"rank": 4, "update_proj_gap": 2},
    "apollo_adamw": {"rank": 4, "update_proj_gap": 2},
    "apollo_mini": {"update_proj_gap": 2},
    "frugal": {"update_proj_gap": 2},
    "gwt_adamw": {"levels": 1},
    "grass_adamw": {"rank": 4, "update_proj_gap": 2},
}


def dataset():
    ids = torch.randint(0, 64, (24, 16), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def run(out, resume, name, layerwise=False):
    args = EffiTrainingArguments(
        output_dir=str(out),
        effi_optim=name,
        effi_optim_args={**ARGS[name], **({"layerwise": True} if layerwise else {})},
        effi_schedule="cosine",
        warmup_steps=1,
        max_steps=STEPS,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=3,
        use_cpu=True,
        report_to="none",
        seed=0,
        disable_tqdm=True,
        learning_rate=3e-3,
        weight_decay=0.1,
    )
    trainer = EffiTrainer(model=tiny_model("llama", vocab_size=64), args=args, train_dataset=dataset())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


# Every name whole-model; layer-wise (state kept per inner optimizer) for GaLore and APOLLO-Mini.
CASES = [(n, False) for n in SUBSPACE_OPTIMIZERS] + [("galore_adamw", True), ("apollo_mini", True)]


@pytest.mark.parametrize("name,layerwise", CASES, ids=[f"{n}-{'layerwise' if lw else 'whole'}" for n, lw in CASES])
def test_trainer_resume_is_bit_exact(tmp_path, name, layerwise):
    full = run(tmp_path / "full", None, name, layerwise)
    ckpt = tmp_path / "full" / "checkpoint-3"
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert saved["state"], "the checkpoint holds no optimizer state"
    resumed = run(tmp_path / "resumed", str(ckpt), name, layerwise)
    assert resumed.state.global_step == STEPS
    reference = dict(full.model.named_parameters())
    moved = max(
        (p - q).abs().max().item()
        for p, q in zip(full.model.parameters(), tiny_model("llama", vocab_size=64).parameters())
    )
    assert moved > 1e-3
    for n, p in resumed.model.named_parameters():
        assert torch.equal(p, reference[n]), f"{name}: {n} differs after resume"
