"""make / make_optimizer: grouping, PEFT models, names, bad input."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

import hf_effi
from hf_effi.optim import OPTIMIZERS, build_param_groups, make_optimizer, register_optimizer, select_target_modules
from hf_effi.optim.factory import OptimizerFactory
from hf_effi.registry import Registry
from hf_effi.testing import TINY_ARCHS, tiny_model


def tiny_llama(**kw):
    return tiny_model("llama", vocab_size=64, **kw)


def roles(opt):
    return {g["effi_role"]: g for g in opt.param_groups}


def test_groups_no_decay_on_biases_and_norms():
    model = tiny_llama(attention_bias=True)
    groups = {g["effi_role"]: g for g in build_param_groups(model, weight_decay=0.1)}
    assert set(groups) == {"decay", "no_decay"}
    assert all("norm" in n or n.endswith("bias") for n in groups["no_decay"]["param_names"])
    assert any(n.endswith("bias") for n in groups["no_decay"]["param_names"])
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.1
    n_grouped = sum(len(g["params"]) for g in groups.values())
    assert n_grouped == len(list(model.parameters()))


def test_tied_embedding_is_grouped_once():
    model = tiny_llama(tie_word_embeddings=True)
    model.tie_weights()
    params = [p for g in build_param_groups(model, weight_decay=0.0) for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))


def test_targets_default_to_linear_weights_without_head():
    model = tiny_llama()
    targets = select_target_modules(model)
    assert "lm_head" not in targets and len(targets) == 2 * 7
    assert set(select_target_modules(model, ["q_proj", "v_proj"])) == {
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    }
    assert len(select_target_modules(model, r".*mlp\..*")) == 2 * 3
    groups = {g["effi_role"]: g for g in build_param_groups(model, weight_decay=0.0, with_targets=True)}
    assert len(groups["target"]["params"]) == 14 and "lm_head.weight" in groups["decay"]["param_names"]
    with pytest.raises(ValueError, match="matched no trainable nn.Linear"):
        select_target_modules(model, ["qkv"])


def test_peft_model_gets_only_adapter_parameters():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    opt = make_optimizer("adamw", model, lr=1e-3, weight_decay=0.01)
    names = [n for g in opt.param_groups for n in g["param_names"]]
    assert names and all("lora_" in n for n in names)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("name", ["adamw", "sgd", "adafactor"])
def test_every_baseline_trains(name):
    model = tiny_llama()
    opt, sched = hf_effi.make(name, model, lr=1e-2, num_training_steps=5, schedule="cosine", weight_decay=0.01)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_optimizer_kwargs_reach_the_optimizer():
    opt = make_optimizer("adamw", tiny_llama(), lr=1e-3, betas=(0.8, 0.9))
    assert all(g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    opt = make_optimizer("sgd", tiny_llama(), lr=1e-3, momentum=0.9, nesterov=True)
    assert all(g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("adamx", {}, "Did you mean 'adamw'"),
        ("mezo", {}, "ZOTrainer"),
        ("lisa", {}, "LISATrainer"),
        ("adamw", {"lr": 0.0}, "lr must be a positive"),
        ("adamw", {"lr": -1e-3}, "lr must be a positive"),
        ("adamw", {"beta": (0.9, 0.99)}, "did you mean 'betas'"),
        ("adamw", {"target_modules": ["q_proj"]}, "target_modules does not apply"),
        ("adamw", {"weight_decay": -0.1}, "weight_decay"),
        ("adamw", {"gradient_accumulation_steps": 2}, "layerwise=True"),
        ("adamw", {"num_training_steps": 0}, "positive int"),
        ("adamw", {"warmup": 100}, "not shorter than training"),
        ("adamw", {"schedule": "cosin"}, "Did you mean 'cosine'"),
    ],
)
def test_bad_input(name, kwargs, match):
    kwargs = {"lr": 1e-3, "num_training_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        hf_effi.make(name, tiny_llama(), **kwargs)


def test_no_trainable_parameter():
    model = tiny_llama()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        make_optimizer("adamw", model, lr=1e-3)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        make_optimizer("adamw", [torch.zeros(2)], lr=1e-3)


def test_available_lists_every_family():
    avail = hf_effi.available()
    assert {"adamw", "sgd", "adafactor"} <= set(avail["optimizers"])
    assert {"constant", "linear", "cosine", "wsd", "rex"} <= set(avail["schedules"])
    assert all(isinstance(d, str) and d for fam in avail.values() for d in fam.values())


def test_registry_rules():
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer("adamw", lambda param_groups, *, lr: None, "dup")
    with pytest.raises(ValueError, match="lower-case"):
        OPTIMIZERS.register("AdamW2", lambda: None, "bad name")
    with pytest.raises(ValueError, match="already exists"):
        Registry("optimizer", family="optimizers")
    assert "ADAMW" in OPTIMIZERS and OPTIMIZERS.get(" AdamW ").name == "adamw"


def test_factory_protocol_for_optimizer_cls_and_kwargs():
    cls, kwargs = hf_effi.make_cls_and_kwargs("adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    assert cls is OptimizerFactory and not issubclass(cls, torch.optim.Optimizer)
    opt = cls()(tiny_llama(), **kwargs)  # what Trainer.create_optimizer does with a factory
    assert isinstance(opt, torch.optim.AdamW) and roles(opt)["decay"]["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="did you mean 'betas'"):
        hf_effi.make_cls_and_kwargs("adamw", lr=1e-3, beta=(0.9, 0.95))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_make_on_every_tiny_architecture(arch):
    model = tiny_model(arch)
    opt, sched = hf_effi.make("adamw", model, lr=1e-2, num_training_steps=3, schedule="wsd", weight_decay=0.1)
    groups = {g["effi_role"]: g for g in opt.param_groups}
    assert all(p.ndim >= 2 for p in groups["decay"]["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert len(select_target_modules(model)) > 0
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sched.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()) if p.grad is not None)
