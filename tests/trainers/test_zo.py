"""ZOTrainer / ZOOptimizer: MeZO-SGD, ZO-Adam and Sparse MeZO on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from hf_effi.testing import tiny_model
from hf_effi.trainers.zo import ZOArguments, ZOTrainer
from hf_effi.trainers.zo_perturb import (
    NOISE_CHUNK,
    ZO_METHODS,
    ZOOptimizer,
    magnitude_mask,
    noise_chunks,
    perturb_,
    spsa_projected_gradient,
    unpack_mask,
)

VOCAB = 64


def small_model(seed: int = 0):
    return tiny_model("llama", seed=seed, vocab_size=VOCAB, hidden_size=32, intermediate_size=64)


def dataset(rows: int = 16, seq: int = 16, seed: int = 0) -> Dataset:
    ids = torch.randint(0, VOCAB, (rows, seq), generator=torch.Generator().manual_seed(seed))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def zo_args(tmp_path, **overrides) -> ZOArguments:
    kwargs = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                  lr_scheduler_type="constant", save_strategy="no", report_to="none", use_cpu=True,
                  disable_tqdm=True, logging_steps=1, seed=0)
    kwargs.update(overrides)
    return ZOArguments(**kwargs)


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def full_noise(param: torch.Tensor, seed: int) -> torch.Tensor:
    """The whole z of one parameter, materialised (the reference the chunked passes must agree with)."""
    return torch.cat([z for _, _, z in noise_chunks(param, seed)]).view(param.shape)


def batch(seed: int = 1, rows: int = 4, seq: int = 16) -> dict:
    ids = torch.randint(0, VOCAB, (rows, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


# --- perturbation -------------------------------------------------------------------------------------------------


def test_perturb_unperturb_restores_within_the_documented_rounding_bound():
    model = small_model()
    params = [p for p in model.parameters()]
    before = [p.detach().clone() for p in params]
    seeds = list(range(100, 100 + len(params)))
    eps = 1e-3
    perturb_(params, seeds, eps)
    moved = max((p - b).abs().max().item() for p, b in zip(params, before))
    perturb_(params, seeds, -2 * eps)
    perturb_(params, seeds, eps)
    exact = total = 0
    for p, b, s in zip(params, before, seeds):
        z = full_noise(p, s)
        # three roundings of at most half an ulp of the intermediate values |θ| + 2ε|z|
        bound = 1.5 * torch.finfo(torch.float32).eps * (b.abs() + 2 * eps * z.abs())
        assert ((p - b).abs() <= bound).all(), f"restore error above 1.5 ulp: {(p - b).abs().max().item()}"
        exact += (p == b).sum().item()
        total += p.numel()
    assert moved > 1e-3, "the perturbation did not move the weights"
    assert exact / total > 0.5, f"only {exact / total:.1%} of the elements restored bit-exactly"


def test_objective_error_still_restores_weights():
    model = small_model()
    params = list(model.parameters())
    before = flat(model)
    calls = []

    def objective():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return torch.tensor(0.0)

    with pytest.raises(RuntimeError, match="boom"):
        spsa_projected_gradient(objective, params, list(range(len(params))), 1e-3)
    assert (flat(model) - before).abs().max().item() <= 2.4e-7  # rounding only (norm weights are 1.0: ulp 1.2e-7)


def test_estimate_leaves_the_global_rng_alone_and_allocates_no_grad():
    model = small_model()
    opt = ZOOptimizer(model.parameters(), lr=1e-2)
    inputs = batch()
    state = torch.get_rng_state()
    opt.add_estimate(*opt.estimate(lambda: model(**inputs).loss)[:2])
    opt.step()
    assert torch.equal(state, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())


def test_every_pass_regenerates_the_same_noise_across_chunk_boundaries():
    big = torch.nn.Parameter(torch.zeros(NOISE_CHUNK + 37))  # two chunks: the second one short
    z = full_noise(big, 7)
    assert z.numel() == big.numel() and 0.99 < z.std().item() < 1.01
    with torch.no_grad():
        perturb_([big], [7], 0.5)
    assert torch.equal(big.detach(), 0.5 * z)
    # ZO-Adam draws through its own generator loop: one step from zero moments moves by -lr * sign(z)
    opt = ZOOptimizer([big], lr=1e-3, method="zo_adam", adam_eps=0.0)
    opt._pending.append((7, 2.0))
    seed = opt.param_seeds(7)[0]
    opt.step()
    torch.testing.assert_close(big.detach(), 0.5 * z - 1e-3 * torch.sign(full_noise(big, seed)), rtol=0, atol=1e-7)


# --- estimators against materialised references -----------------------------------------------------------------


def test_mezo_sgd_update_is_the_average_of_the_samples():
    model = small_model()
    params = [p for p in model.parameters()]
    before = [p.detach().clone() for p in params]
    opt = ZOOptimizer(model.parameters(), lr=0.1, weight_decay=0.0)
    samples = [(opt.next_sample_seed(), 0.7), (opt.next_sample_seed(), -1.3)]
    for s, g in samples:
        opt.add_estimate(s, g)
    opt.step()
    for i, (p, b) in enumerate(zip(params, before)):
        seeds = [s for s, _ in samples]
        ref = b - 0.1 * sum(g * full_noise(p, opt_seed) for (_, g), opt_seed in
                            zip(samples, [opt.param_seeds(s)[i] for s in seeds])) / 2
        torch.testing.assert_close(p.detach(), ref, rtol=0, atol=1e-6)
    assert opt.pending == []


def test_zo_adam_matches_adam_on_the_materialised_estimate():
    model = small_model()
    params = list(model.parameters())
    opt = ZOOptimizer(params, lr=1e-2, method="zo_adam", betas=(0.9, 0.99), adam_eps=1e-8)
    ref = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, g in enumerate([0.5, -2.0, 1.0], start=1):
        s = opt.next_sample_seed()
        opt.add_estimate(s, g)
        opt.step()
        for i, p in enumerate(params):
            g_hat = g * full_noise(p, opt.param_seeds(s)[i])
            m[i] = 0.9 * m[i] + 0.1 * g_hat
            v[i] = 0.99 * v[i] + 0.01 * g_hat**2
            ref[i] -= 1e-2 * (m[i] / (1 - 0.9**t)) / ((v[i] / (1 - 0.99**t)).sqrt() + 1e-8)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=0, atol=1e-6)
    state = opt.state[params[0]]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and state["step"].item() == 3


def test_sparse_mezo_touches_only_the_smallest_weights():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 50))
    before = w.detach().clone()
    bits, h = magnitude_mask(w, 0.2)
    exact_h = before.abs().flatten().kthvalue(math.ceil(0.2 * w.numel())).values.item()
    assert h == exact_h  # small tensors: the exact quantile
    mask = unpack_mask(bits, 0, w.numel()).view(w.shape)
    assert torch.equal(mask, before.abs() <= h) and abs(mask.float().mean().item() - 0.2) < 1e-3
    opt = ZOOptimizer([w], lr=0.1, method="sparse_mezo", sparse_fraction=0.2)
    s, g, _ = opt.estimate(lambda: (w**2).sum())
    opt.add_estimate(s, g)
    opt.step()
    changed = w.detach() != before
    assert changed.any() and not (changed & ~mask).any(), "an element outside the mask moved"
    z = full_noise(w, opt.param_seeds(s)[0])
    torch.testing.assert_close(w.detach(), before - 0.1 * g * z * mask, rtol=0, atol=1e-6)


def test_sparse_threshold_of_a_large_tensor_is_a_strided_sample_quantile():
    w = torch.randn(300_000, generator=torch.Generator().manual_seed(0))
    bits, h = magnitude_mask(w, 0.25)
    fraction = unpack_mask(bits, 0, w.numel()).float().mean().item()
    assert abs(fraction - 0.25) < 0.01


def test_zo_estimate_aligns_with_the_true_gradient_and_improves_with_samples():
    model = small_model()
    for name, p in model.named_parameters():
        p.requires_grad_("norm" in name)  # 320 trainable parameters: few enough for n-SPSA to converge quickly
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = batch(rows=2, seq=8)
    model.eval()
    model(**inputs).loss.backward()
    true = torch.cat([p.grad.reshape(-1) for p in params])
    for p in params:
        p.grad = None
    cosines = {}
    for n in (8, 64, 512):
        before = torch.cat([p.detach().reshape(-1).clone() for p in params])
        opt = ZOOptimizer(params, lr=1.0, eps=1e-3, seed=n)
        for _ in range(n):
            s, g, _ = opt.estimate(lambda: model(**inputs).loss)
            opt.add_estimate(s, g)
        opt.step()  # lr 1: the move is exactly -ĝ
        after = torch.cat([p.detach().reshape(-1) for p in params])
        estimate = before - after
        cosines[n] = torch.nn.functional.cosine_similarity(estimate, true, dim=0).item()
        with torch.no_grad():
            for p, b in zip(params, torch.split(before, [p.numel() for p in params])):
                p.copy_(b.view(p.shape))
    # Gaussian n-SPSA: cos² ≈ n / (n + d + 1) with d = 320 -> 0.16, 0.41, 0.78
    assert cosines[512] > 0.65, cosines
    assert 0 < cosines[8] < cosines[64] < cosines[512], cosines


# --- inside Trainer ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ZO_METHODS)
def test_training_lowers_the_loss_allocates_no_grad_and_evaluates(tmp_path, method):
    model = small_model()
    lr = {"mezo_sgd": 2e-3, "zo_adam": 2e-3, "sparse_mezo": 1e-2}[method]
    args = zo_args(tmp_path, zo_method=method, learning_rate=lr, max_steps=250, logging_steps=50)
    trainer = ZOTrainer(model=model, args=args, train_dataset=dataset(), eval_dataset=dataset())
    start = trainer.evaluate()["eval_loss"]
    trainer.train()
    end = trainer.evaluate()["eval_loss"]
    assert all(p.grad is None for p in model.parameters())
    assert end < start - 0.03, (start, end)
    assert trainer.zo_optimizer.samples_drawn == 250
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and "grad_norm" not in logged[0] and logged[0]["learning_rate"] == pytest.approx(lr)


def test_gradient_accumulation_averages_one_sample_per_micro_batch(tmp_path):
    model = small_model()
    args = zo_args(tmp_path, max_steps=3, gradient_accumulation_steps=3, per_device_train_batch_size=2)
    trainer = ZOTrainer(model=model, args=args, train_dataset=dataset(rows=18))
    seen = []
    original = trainer.zo_optimizer if trainer.optimizer else None
    assert original is None  # built in train()

    class Spy(ZOOptimizer):
        def step(self, closure=None):
            seen.append(len(self.pending))
            return super().step(closure)

    trainer.create_optimizer()
    trainer.optimizer.__class__ = Spy
    trainer.train()
    assert seen == [3, 3, 3]
    assert trainer.zo_optimizer.samples_drawn == 9


def test_scheduler_sets_the_update_learning_rate(tmp_path):
    model = small_model()
    args = zo_args(tmp_path, max_steps=4, lr_scheduler_type="linear", learning_rate=1e-2)
    trainer = ZOTrainer(model=model, args=args, train_dataset=dataset())
    trainer.train()
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])


@pytest.mark.parametrize("method", ["zo_adam", "sparse_mezo"])
def test_resume_continues_bit_for_bit(tmp_path, method):
    common = dict(zo_method=method, max_steps=6, save_strategy="steps", save_steps=3, lr_scheduler_type="linear",
                  learning_rate=1e-2 if method == "sparse_mezo" else 1e-3)
    straight = small_model()
    ZOTrainer(model=straight, args=zo_args(tmp_path / "a", **common), train_dataset=dataset()).train()
    ZOTrainer(model=small_model(), args=zo_args(tmp_path / "b", **common), train_dataset=dataset()).train()
    resumed = small_model()
    trainer = ZOTrainer(model=resumed, args=zo_args(tmp_path / "b", **common), train_dataset=dataset())
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    assert trainer.zo_optimizer.samples_drawn == 6
    assert torch.equal(flat(straight), flat(resumed))
    assert not torch.equal(flat(straight), flat(small_model()))


def test_peft_lora_perturbs_only_the_adapters(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(small_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = zo_args(tmp_path, max_steps=3, zo_eps=1e-2)
    trainer = ZOTrainer(model=model, args=args, train_dataset=dataset())
    trainer.train()
    optimized = {id(p) for g in trainer.zo_optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert optimized == {id(named[n]) for n in adapters}
    assert all(torch.equal(named[n], v) for n, v in base.items()), "a frozen base weight changed"
    assert any(not torch.equal(named[n], v) for n, v in adapters.items() if "lora_B" in n)


def test_non_differentiable_objective(tmp_path):
    model = small_model()
    calls = []

    def neg_accuracy(model, inputs):
        calls.append(1)
        logits = model(input_ids=inputs["input_ids"]).logits[:, :-1]
        return -(logits.argmax(-1) == inputs["labels"][:, 1:]).float().mean()

    args = zo_args(tmp_path, max_steps=2)
    trainer = ZOTrainer(model=model, args=args, train_dataset=dataset(), zo_objective=neg_accuracy)
    before = flat(model)
    trainer.train()
    assert len(calls) == 4  # two forwards per step
    assert not torch.equal(before, flat(model))
    assert "eval_loss" in trainer.evaluate(dataset())  # evaluation still reports the model's loss
    trainer.zo_objective = lambda model, inputs: torch.ones(2)
    with pytest.raises(TypeError, match="scalar tensor"):
        trainer.train()


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(zo_method="mezo"), "did you mean 'mezo_sgd'"),
        (dict(zo_eps=0.0), "zo_eps=0.0 must be a positive"),
        (dict(zo_sparse_fraction=1.5), "zo_sparse_fraction=1.5"),
        (dict(max_grad_norm=1.0), "max_grad_norm=1.0 clips gradients"),
        (dict(effi_optim="adamw"), "effi_optim='adamw' cannot be used"),
        (dict(activation_checkpointing=True), "activation_checkpointing=True"),
    ],
)
def test_bad_arguments(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        zo_args(tmp_path, **overrides)


def test_outer_optimizer_and_plain_arguments_are_refused(tmp_path):
    from transformers import TrainingArguments

    model = small_model()
    adam = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="outer optimizer"):
        ZOTrainer(model=model, args=zo_args(tmp_path), train_dataset=dataset(), optimizers=(adam, None))
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        ZOTrainer(model=model, args=zo_args(tmp_path), train_dataset=dataset(),
                  optimizer_cls_and_kwargs=(torch.optim.AdamW, {}))
    with pytest.raises(TypeError, match="ZOArguments"):
        ZOTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        ZOTrainer(model=model, args=zo_args(tmp_path), train_dataset=dataset())


def test_optimizer_misuse_is_refused():
    model = small_model()
    opt = ZOOptimizer(model.parameters(), lr=1e-2)
    with pytest.raises(RuntimeError, match="no projected gradient"):
        opt.step()
    with pytest.raises(FloatingPointError, match="not finite"):
        opt.add_estimate(1, float("nan"))
    other = ZOOptimizer(model.parameters(), lr=1e-2, method="zo_adam")
    with pytest.raises(ValueError, match="same zo_method"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="not contiguous"):
        ZOOptimizer([torch.nn.Parameter(torch.zeros(4, 6).t())], lr=1e-2)


def test_every_zo_argument_has_help_and_is_documented():
    import dataclasses

    fields = [f for f in dataclasses.fields(ZOArguments) if f.name.startswith("zo_")]
    assert {f.name for f in fields} == {"zo_method", "zo_eps", "zo_seed", "zo_sparse_fraction"}
    for f in fields:
        assert f.metadata.get("help"), f.name
        assert f"{f.name}:" in ZOArguments.__doc__, f"{f.name} missing from the ZOArguments docstring"
