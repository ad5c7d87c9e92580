"""LISATrainer: only active layers hold gradients and optimizer state at every step, switching frees the state of
deactivated layers, resume reproduces the layer sequence bit for bit, any hf_effi optimizer works, bad input fails."""

import re

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from hf_effi.testing import tiny_model
from hf_effi.trainers.layer_selection import SELECTION_FILE, trainable_parameter_count
from hf_effi.trainers.lisa import LISAArguments, LISATrainer, find_decoder_layers
from hf_effi.utils.memory import optimizer_state_bytes

VOCAB = 64


def dataset(rows=32):
    ids = torch.randint(0, VOCAB, (rows, 16), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def lisa_args(out, **overrides):
    kw = dict(output_dir=str(out), max_steps=6, per_device_train_batch_size=4, lisa_activated_layers=1,
              lisa_interval_steps=2, use_cpu=True, report_to="none", save_strategy="no", effi_optim="adamw",
              learning_rate=1e-2, disable_tqdm=True, logging_steps=1, seed=0)
    kw.update(overrides)
    return LISAArguments(**kw)


class StateProbe(TrainerCallback):
    """At every optimizer step: which parameters hold a gradient (before step) and state (after step), and bytes."""

    def __init__(self, model):
        self.model = model
        self.rows = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
        params = list(self.model.parameters())
        self._grads = {id(p) for p in params if p.grad is not None}
        self._grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
        inner = getattr(optimizer, "optimizer", optimizer)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.rows.append({
            "trainable": {id(p) for p in trainable},
            "trainable_numel": trainable_parameter_count(self.model),
            "trainable_tensors": len(trainable),
            "grads": self._grads,
            "grad_bytes": self._grad_bytes,
            "state": {id(p) for p in inner.state},
            "state_bytes": optimizer_state_bytes(inner),
        })


def run(out, model=None, probe=True, **overrides):
    model = model or tiny_model("llama", vocab_size=VOCAB, num_hidden_layers=4)
    callbacks = [StateProbe(model)] if probe else []
    trainer = LISATrainer(model=model, args=lisa_args(out, **overrides), train_dataset=dataset(), callbacks=callbacks)
    trainer.train()
    return trainer, (callbacks[0] if probe else None)


@pytest.mark.parametrize("policy", ["train", "freeze"])
def test_state_and_gradients_only_for_active_layers_every_step(tmp_path, policy):
    # Gemma ties its embeddings: the shared matrix must be counted once.
    model = tiny_model("gemma", vocab_size=VOCAB, num_hidden_layers=4)
    trainer, probe = run(tmp_path, model=model, lisa_embeddings_and_head=policy, max_steps=8)
    assert len(probe.rows) == 8
    for row in probe.rows:
        assert row["grads"] == row["trainable"] == row["state"]
        # AdamW: 4 bytes of gradient + 8 of moments per element, plus a float32 step counter per tensor.
        assert row["grad_bytes"] == 4 * row["trainable_numel"]
        assert row["state_bytes"] == 8 * row["trainable_numel"] + 4 * row["trainable_tensors"]
    layer_numel = sum(p.numel() for p in find_decoder_layers(model)[1][0].parameters())
    others = sum(p.numel() for n, p in model.named_parameters() if ".layers." not in n)
    expected = layer_numel + (others if policy == "train" else 0)
    assert {row["trainable_numel"] for row in probe.rows} == {expected}
    # More layers were visited than fit at once, yet state never grew beyond one layer (+ embeddings).
    visited = {g for _, active in trainer.selection_history for g in active}
    assert len(visited) > 1
    assert max(r["state_bytes"] for r in probe.rows) == 8 * expected + 4 * probe.rows[0]["trainable_tensors"]
    # After train() the model is left trainable as given; evaluate() works.
    assert all(p.requires_grad for p in model.parameters()) == (policy == "train")
    assert trainer.evaluate(dataset(8))["eval_loss"] > 0


def test_switch_frees_state_and_reactivation_starts_fresh(tmp_path):
    model = tiny_model("llama", vocab_size=VOCAB, num_hidden_layers=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, probe = run(tmp_path, model=model, max_steps=4, lisa_interval_steps=1)
    by_id = {id(p): n for n, p in model.named_parameters()}
    for (step, active), row in zip(trainer.selection_history, probe.rows):
        layers = {re.match(r"model\.layers\.\d+", by_id[i]).group(0) for i in row["state"] if ".layers." in by_id[i]}
        assert layers == set(active), f"step {step}: state held for {layers}, active {active}"
    # A never-sampled layer was not updated at all.
    visited = {g for _, active in trainer.selection_history for g in active}
    for i in range(4):
        changed = any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if f"layers.{i}." in n)
        assert changed == (f"model.layers.{i}" in visited)
    # Deactivating drops the state; reactivating starts it fresh (step counter back to 1 after one update).
    (last,) = trainer.active_groups
    other = next(g for g in trainer.group_names if g != last)
    opt = trainer.optimizer.optimizer
    layer_params = [p for n, p in model.named_parameters() if n.startswith(last + ".")]
    assert all(opt.state[p]["step"] >= 1 for p in layer_params)
    trainer.apply_selection([other])
    assert all(p not in opt.state and p.grad is None and not p.requires_grad for p in layer_params)
    trainer.apply_selection([last])
    ids = torch.randint(0, VOCAB, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(opt.state[p]["step"] == 1 for p in layer_params)


def test_resume_with_gradient_accumulation_reproduces_the_sequence(tmp_path):
    common = dict(max_steps=8, gradient_accumulation_steps=2, lisa_interval_steps=3, save_strategy="steps",
                  save_steps=4, per_device_train_batch_size=2)
    full, _ = run(tmp_path / "full", probe=False, **common)
    ckpt = tmp_path / "full" / "checkpoint-4"
    saved = torch.load(ckpt / SELECTION_FILE, weights_only=True)
    assert tuple(saved["active_groups"]) == full.selection_history[1][1]  # drawn at step 3, still active at 4

    model = tiny_model("llama", vocab_size=VOCAB, num_hidden_layers=4)
    resumed = LISATrainer(model=model, args=lisa_args(tmp_path / "resumed", **common), train_dataset=dataset())
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.selection_history == [h for h in full.selection_history if h[0] >= 6]
    ref = dict(full.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=0, atol=0, msg=f"{n} differs after resume")


@pytest.mark.parametrize("optim,optim_args", [("galore_adamw", {"rank": 4}), ("came", {})], ids=["galore", "came"])
def test_other_hf_effi_optimizers_keep_state_only_for_active_layers(tmp_path, optim, optim_args):
    trainer, probe = run(tmp_path, effi_optim=optim, effi_optim_args=optim_args, max_steps=4, learning_rate=1e-3)
    for row in probe.rows:
        assert row["state"] == row["trainable"]
    assert trainer.state.global_step == 4


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_activation_checkpointing_trains_the_active_layer_with_frozen_embeddings(tmp_path, reentrant):
    model = tiny_model("llama", vocab_size=VOCAB, num_hidden_layers=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, probe = run(tmp_path, model=model, max_steps=2, lisa_embeddings_and_head="freeze",
                         activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": reentrant})
    (layer,) = trainer.selection_history[0][1]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(layer + "."))
    assert all(row["grads"] == row["trainable"] for row in probe.rows)


def test_find_decoder_layers_generic():
    for arch in ("llama", "gpt_neox", "qwen2"):
        name, layers = find_decoder_layers(tiny_model(arch, vocab_size=VOCAB, num_hidden_layers=3))
        assert len(layers) == 3 and name.endswith("layers")
    with pytest.raises(ValueError, match="no decoder-layer list"):
        find_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_bad_input(tmp_path):
    model = tiny_model("llama", vocab_size=VOCAB, num_hidden_layers=2)
    with pytest.raises(ValueError, match="lisa_activated_layers=3 is larger than the 2 decoder layers"):
        LISATrainer(model=model, args=lisa_args(tmp_path, lisa_activated_layers=3), train_dataset=dataset())
    assert all(p.requires_grad for p in model.parameters())  # nothing half-applied
    for bad, match in [(dict(lisa_activated_layers=0), "lisa_activated_layers"),
                       (dict(lisa_interval_steps=0), "lisa_interval_steps"),
                       (dict(lisa_embeddings_and_head="sometimes"), "lisa_embeddings_and_head")]:
        with pytest.raises(ValueError, match=match):
            lisa_args(tmp_path, **bad)
    with pytest.raises(ValueError, match="schedule-free"):
        LISATrainer(model=model, args=lisa_args(tmp_path, effi_optim="schedule_free_adamw", lr_scheduler_type="constant"),
                    train_dataset=dataset())
    from hf_effi.trainers import EffiTrainingArguments

    with pytest.raises(TypeError, match="LISAArguments"):
        LISATrainer(model=model, args=EffiTrainingArguments(output_dir=str(tmp_path)), train_dataset=dataset())
    trainer = LISATrainer(model=model, args=lisa_args(tmp_path), train_dataset=dataset())
    (tmp_path / "foreign").mkdir()
    with pytest.raises(ValueError, match="has no layer_selection.pt"):
        trainer._load_optimizer_and_scheduler(str(tmp_path / "foreign"))
