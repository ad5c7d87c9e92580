"""HFTTrainer: exactly half of the weight matrices train per round (half per category in every block), rounds redraw,
frozen matrices stay untouched and hold no state, resume continues the sequence, bad input fails."""

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from hf_effi.testing import tiny_model
from hf_effi.trainers.hft import HFTArguments, HFTTrainer, hft_categories

VOCAB = 64


def dataset(rows=32):
    ids = torch.randint(0, VOCAB, (rows, 16), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def hft_args(out, **overrides):
    kw = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=4, hft_interval_steps=2, use_cpu=True,
              report_to="none", save_strategy="no", effi_optim="adamw", learning_rate=1e-2, disable_tqdm=True, seed=0)
    kw.update(overrides)
    return HFTArguments(**kw)


class Probe(TrainerCallback):
    def __init__(self, model):
        self.model, self.rows = model, []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
        inner = getattr(optimizer, "optimizer", optimizer)
        self.rows.append(({id(p) for p in self.model.parameters() if p.requires_grad}, {id(p) for p in inner.state}))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_exactly_half_per_category_and_rounds_redraw(tmp_path, arch):
    model = tiny_model(arch, vocab_size=VOCAB, num_hidden_layers=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = Probe(model)
    trainer = HFTTrainer(model=model, args=hft_args(tmp_path), train_dataset=dataset(), callbacks=[probe])
    categories = hft_categories(model)
    n_units = sum(len(u) for u in categories.values())
    trainer.train()
    assert [s for s, _ in trainer.selection_history] == [0, 2]
    for _, active in trainer.selection_history:
        assert len(active) in {n_units // 2, (n_units + 1) // 2}
        for key, units in categories.items():
            k = sum(u in active for u in units)
            assert k in {len(units) // 2, (len(units) + 1) // 2}, f"{key}: {k} of {len(units)} active"
    assert trainer.selection_history[0][1] != trainer.selection_history[1][1]
    for trainable, state in probe.rows:
        assert trainable == state
    # A matrix never drawn in either round is bit-identical to the start.
    drawn = {u for _, active in trainer.selection_history for u in active}
    for name, p in model.named_parameters():
        unit = name.rsplit(".", 1)[0]
        if unit not in drawn:
            assert torch.equal(p, before[name]), name
    assert trainer.evaluate(dataset(8))["eval_loss"] > 0


def test_llama_categories_match_the_paper_reading():
    model = tiny_model("llama", vocab_size=VOCAB, num_hidden_layers=2)
    cats = hft_categories(model)
    assert len(cats["model.layers.0/attention"]) == 4  # q k v o: 2 of 4 train
    assert len(cats["model.layers.0/feed_forward"]) == 3  # gate up down: 1 or 2, alternating
    assert len(cats["model.layers.0/other"]) == 2  # the two norms: 1 of 2
    assert cats["outside"] == ["model.embed_tokens", "model.norm", "lm_head"]


def test_one_round_per_epoch_by_default_and_resume(tmp_path):
    # 32 rows / batch 4 = 8 steps per epoch; 12 steps -> rounds at 0 and 8.
    common = dict(max_steps=12, hft_interval_steps=0, save_strategy="steps", save_steps=6)
    full = HFTTrainer(model=tiny_model("llama", vocab_size=VOCAB), args=hft_args(tmp_path / "a", **common),
                      train_dataset=dataset())
    full.train()
    assert [s for s, _ in full.selection_history] == [0, 8]
    resumed = HFTTrainer(model=tiny_model("llama", vocab_size=VOCAB), args=hft_args(tmp_path / "b", **common),
                         train_dataset=dataset())
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-6"))
    assert resumed.selection_history == [full.selection_history[1]]
    ref = dict(full.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=0, atol=0, msg=n)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="hft_interval_steps"):
        hft_args(tmp_path, hft_interval_steps=-1)
    from hf_effi.trainers.lisa import LISAArguments

    with pytest.raises(TypeError, match="HFTArguments"):
        HFTTrainer(model=tiny_model("llama", vocab_size=VOCAB), args=LISAArguments(output_dir=str(tmp_path)))
