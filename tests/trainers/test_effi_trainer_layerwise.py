"""EffiTrainer with a layer-wise optimizer: same result as AdamW, true grad norm logged, impossible setups refused."""

import pytest
import torch
from datasets import Dataset

from hf_effi.testing import tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

pytestmark = pytest.mark.slow


def dataset():
    ids = torch.randint(0, 128, (10, 12), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def train(tmp_path, layerwise, ga):
    # No global clipping on either side: a layer-wise optimizer cannot clip by the global norm (see backward_step).
    args = EffiTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=ga,
        num_train_epochs=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        logging_steps=1,
        seed=0,
        max_grad_norm=0.0,
        effi_optim="adamw",
        effi_schedule="cosine",
        warmup_steps=1,
        effi_optim_args={"foreach": False, "layerwise": layerwise},
    )
    trainer = EffiTrainer(model=tiny_model("llama", vocab_size=128), args=args, train_dataset=dataset())
    trainer.train()
    return trainer


@pytest.mark.parametrize("ga", [1, 2])
def test_layerwise_equals_adamw_inside_effi_trainer(tmp_path, ga):
    plain = train(tmp_path / "plain", False, ga)
    layerwise = train(tmp_path / "layerwise", True, ga)
    ref = dict(plain.model.named_parameters())
    for n, p in layerwise.model.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=0, atol=0, msg=n)
    norms = lambda t: [h["grad_norm"] for h in t.state.log_history if "grad_norm" in h]  # noqa: E731
    assert all(n > 0 for n in norms(layerwise))
    assert norms(layerwise) == pytest.approx(norms(plain), rel=1e-5)


def test_fp16_with_layerwise_is_refused(tmp_path):
    args = EffiTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        effi_optim="adamw",
        effi_optim_args={"layerwise": True},
    )
    args.fp16 = True  # set after validation: TrainingArguments itself may refuse fp16 on CPU first
    with pytest.raises(ValueError, match="fp16"):
        EffiTrainer(model=tiny_model("llama", vocab_size=128), args=args, train_dataset=dataset())
