"""A patched causal LM trains on the same loss and gradients as the original, without returning logits."""

import pytest
import torch
from datasets import Dataset

from hf_effi.losses import is_patched, patch_linear_cross_entropy, unpatch_linear_cross_entropy
from hf_effi.testing import tiny_model
from hf_effi.trainers import EffiTrainer, EffiTrainingArguments


def _batch(vocab=256, b=2, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    return ids, labels


def _loss_and_grads(model, ids, labels, **kw):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, **kw)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_patched_equals_original(arch):
    model = tiny_model(arch)
    model.train()
    ids, labels = _batch()
    ref, ref_grads = _loss_and_grads(model, ids, labels)
    patch_linear_cross_entropy(model, chunk_size=5)
    assert is_patched(model)
    out, grads = _loss_and_grads(model, ids, labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    model.eval()  # eval keeps the original forward: logits for metrics and generate()
    with torch.no_grad():
        assert model(input_ids=ids, labels=labels).logits.shape == (*ids.shape, model.config.vocab_size)
    unpatch_linear_cross_entropy(model)
    assert not is_patched(model) and "forward" not in vars(model)


def test_softcap_model_matches():
    model = tiny_model("gemma")
    model.config.final_logit_softcapping = 3.0
    ids, labels = _batch()
    ref, _ = _loss_and_grads(model, ids, labels)
    if not torch.allclose(ref.loss, tiny_model("gemma")(input_ids=ids, labels=labels).loss):
        pass  # gemma applies the softcap: the comparison below is then meaningful
    patch_linear_cross_entropy(model)
    model.train()
    out, _ = _loss_and_grads(model, ids, labels)
    logits = tiny_model("gemma")(input_ids=ids).logits
    capped = 3.0 * torch.tanh(logits / 3.0)
    expected = torch.nn.functional.cross_entropy(capped[:, :-1].reshape(-1, capped.shape[-1]), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_token_weights_train_and_eval_agree():
    model = tiny_model("llama")
    ids, labels = _batch()
    w = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))
    patch_linear_cross_entropy(model)
    model.train()
    train_loss = model(input_ids=ids, labels=labels, token_weights=w).loss
    model.eval()
    eval_loss = model(input_ids=ids, labels=labels, token_weights=w).loss
    torch.testing.assert_close(train_loss, eval_loss, rtol=1e-5, atol=1e-6)
    unweighted = model(input_ids=ids, labels=labels).loss
    assert not torch.allclose(eval_loss, unweighted)


def test_peft_model_is_patched_underneath():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.train()
    ids, labels = _batch()
    ref, ref_grads = _loss_and_grads(model, ids, labels)
    patch_linear_cross_entropy(model)
    out, grads = _loss_and_grads(model, ids, labels)
    assert out.logits is None and set(grads) == set(ref_grads)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-7)


def test_unsupported_and_bad_settings():
    model = tiny_model("llama")
    model.config.logit_scale = 0.5
    with pytest.raises(ValueError, match="logit_scale"):
        patch_linear_cross_entropy(model)
    with pytest.raises(ValueError, match="chunk_size"):
        patch_linear_cross_entropy(tiny_model("llama"), chunk_size=0)
    with pytest.raises(ValueError, match="backend"):
        patch_linear_cross_entropy(tiny_model("llama"), backend="flash")
    with pytest.raises(ValueError, match="Linear output head"):
        patch_linear_cross_entropy(torch.nn.Linear(2, 2))


def _train(tmp_path, flag, **extra):
    torch.manual_seed(0)
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 256, (16,), generator=g).tolist()} for _ in range(8)]
    ds = Dataset.from_list([dict(r, labels=r["input_ids"]) for r in rows])
    args = EffiTrainingArguments(
        output_dir=str(tmp_path / f"run{flag}"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=2, learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
        effi_linear_cross_entropy=flag, effi_loss_chunk_size=7, seed=0, optim="sgd", **extra,
    )
    trainer = EffiTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    return model, trainer


def test_trainer_flag_trains_identically(tmp_path):
    # SGD: Adam's normalised update would magnify float-rounding noise in near-zero gradients.
    plain, _ = _train(tmp_path, False)
    fused, trainer = _train(tmp_path, True)
    assert is_patched(trainer.model)
    for (name, a), b in zip(plain.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_trainer_refuses_token_weights_without_patch(tmp_path):
    model = tiny_model("llama")
    ds = Dataset.from_list([{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4], "token_weights": [1.0] * 4}] * 4)
    args = EffiTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1,
                                 report_to=[], save_strategy="no", use_cpu=True)
    with pytest.raises(ValueError, match="token_weights"):
        EffiTrainer(model=model, args=args, train_dataset=ds).train()
    with pytest.raises(ValueError, match="effi_loss_chunk_size"):
        EffiTrainingArguments(output_dir=str(tmp_path), effi_loss_chunk_size=0)
