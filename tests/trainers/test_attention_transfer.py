"""AttentionTransferTrainer: trains only the added parameters, lowers every layer's MSE, logs it, evaluates."""

import pytest
import torch
from datasets import Dataset

from hf_effi.testing import tiny_model
from hf_effi.trainers.attention_transfer import (
    AttentionTransferArguments,
    AttentionTransferTrainer,
    freeze_for_attention_transfer,
)


def _data(n=16, t=24, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, t), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _layer_mse(model, ids):
    from hf_effi.linear import set_attention_transfer, transfer_losses

    set_attention_transfer(model, True)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    out = {i: v.item() for i, v in transfer_losses(model).items()}
    set_attention_transfer(model, False)
    return out


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=12, learning_rate=3e-2,
                report_to=[], save_strategy="no", logging_steps=4, use_cpu=True, seed=0)
    return AttentionTransferArguments(**{**base, **kw})


@pytest.mark.parametrize("method", ["lolcats", "hedgehog"])
def test_transfer_lowers_every_layer_and_trains_only_new_parameters(tmp_path, method):
    import hf_effi
    from hf_effi.linear import linear_parameters

    model = hf_effi.linearize(tiny_model("llama"), method, **({"window": 4} if method == "lolcats" else {}))
    before_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    new = {id(p) for p in linear_parameters(model)}
    probe = torch.tensor(_data(n=4, seed=1)["input_ids"])
    before = _layer_mse(model, probe)
    trainer = AttentionTransferTrainer(model=model, args=_args(tmp_path), train_dataset=_data(),
                                       eval_dataset=_data(n=4, seed=1))
    trainer.train()
    after = _layer_mse(model, probe)
    assert set(after) == set(before) and all(after[i] < before[i] for i in before), (before, after)
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before_weights[n])
        assert changed == (id(p) in new), n
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(f"transfer_mse/layer_{i}" in logged[-1] for i in before)
    metrics = trainer.evaluate()
    expected = 1000.0 * sum(after.values()) / len(after)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-4)


def test_gradient_accumulation_matches_a_full_batch(tmp_path):
    import hf_effi

    def run(bs, ga, sub):
        model = hf_effi.linearize(tiny_model("llama"), "lolcats", window=4)
        args = _args(tmp_path / sub, per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=2,
                     optim="sgd", learning_rate=0.5)
        AttentionTransferTrainer(model=model, args=args, train_dataset=_data(n=8)).train()
        return torch.cat([p.detach().flatten() for p in hf_effi.linear.linear_parameters(model)])

    torch.testing.assert_close(run(1, 4, "ga"), run(4, 1, "full"), rtol=1e-4, atol=1e-6)


def test_bad_input(tmp_path):
    import hf_effi

    with pytest.raises(ValueError, match="linearize"):
        AttentionTransferTrainer(model=tiny_model("llama"), args=_args(tmp_path), train_dataset=_data())
    with pytest.raises(ValueError, match="nothing for attention transfer"):
        freeze_for_attention_transfer(hf_effi.linearize(tiny_model("llama"), "liger", window=4))
    with pytest.raises(ValueError, match="transfer_mse_factor"):
        _args(tmp_path, transfer_mse_factor=0)
