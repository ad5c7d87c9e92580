"""The peft lifecycle of SoRA, SLTrain and S²FT over tiny Llama, Mistral, Qwen2 and Gemma: a flat list of
(name, arch, config) cases run through shared checks, in the style of peft's own test matrix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

import hf_effi
from hf_effi.peft.s2ft import S2FTConfig
from hf_effi.peft.sltrain import SLTrainConfig
from hf_effi.peft.sora import SoRAConfig
from hf_effi.testing import tiny_model

ARCHS = ("llama", "mistral", "qwen2", "gemma")
CONFIGS = {  # init_weights=False: a non-identity adapter, so the round trips below can fail
    "sora": lambda: SoRAConfig(r=4, init_weights=False, target_modules=["q_proj", "v_proj"]),
    "sltrain": lambda: SLTrainConfig(r=4, density=0.05, init_weights=False, target_modules=["q_proj", "v_proj"]),
    "s2ft": lambda: S2FTConfig(head_ratio=0.25, channel_ratio=0.05, init_weights=False,
                               target_modules=["v_proj", "o_proj", "up_proj", "down_proj"]),
}
PREFIX = {"sora": "sora_", "sltrain": "sltrain_", "s2ft": "s2ft_"}
CASES = [pytest.param(name, arch, id=f"{name}-{arch}") for name in CONFIGS for arch in ARCHS]
TOL = dict(rtol=1e-4, atol=1e-5)
X = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))


def _peft(name, arch, seed=0):
    torch.manual_seed(seed)
    return get_peft_model(tiny_model(arch).eval(), CONFIGS[name]())


def _logits(model, x=X):
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.mark.parametrize("name, arch", CASES)
def test_only_adapters_train_and_step(name, arch):
    model = _peft(name, arch)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(PREFIX[name] in n for n in trainable)
    model.train()
    model(input_ids=X, labels=X).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
        if p.grad is not None:
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    optimizer = hf_effi.make_optimizer("adamw", model, lr=1e-2)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in trainable}
    before = _logits(model.eval())
    optimizer.step()
    assert not torch.allclose(_logits(model), before)


@pytest.mark.parametrize("name, arch", CASES)
def test_disable_merge_unmerge_unload(name, arch):
    base_logits = _logits(tiny_model(arch).eval())
    model = _peft(name, arch)
    out = _logits(model)
    assert (out - base_logits).abs().max() > 1e-4  # the adapter does something
    with model.disable_adapter():
        torch.testing.assert_close(_logits(model), base_logits, **TOL)
    model.merge_adapter()
    torch.testing.assert_close(_logits(model), out, **TOL)
    model.unmerge_adapter()
    torch.testing.assert_close(_logits(model), out, **TOL)
    merged = model.merge_and_unload()
    assert type(merged) is type(tiny_model(arch))
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    torch.testing.assert_close(_logits(merged), out, **TOL)


@pytest.mark.parametrize("name, arch", CASES)
def test_save_load_round_trip(name, arch, tmp_path):
    model = _peft(name, arch)
    out = _logits(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"].startswith(name.upper())
    for trainable in (False, True):
        loaded = PeftModel.from_pretrained(tiny_model(arch).eval(), tmp_path, is_trainable=trainable)
        torch.testing.assert_close(_logits(loaded), out)
        names = [n for n, p in loaded.named_parameters() if p.requires_grad]
        assert bool(names) == trainable and all(PREFIX[name] in n for n in names)


@pytest.mark.parametrize("name, arch", CASES)
def test_multiple_adapters(name, arch):
    model = _peft(name, arch)
    first = _logits(model)
    torch.manual_seed(5)
    config = CONFIGS[name]()
    if name != "sora":  # a different seed of the random selection / support
        config.selection_seed = 3 if name == "s2ft" else 0
        if name == "sltrain":
            config.init_seed = 3
    model.add_adapter("other", config)
    torch.testing.assert_close(_logits(model), first)  # adding does not activate
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".other" in n)
    model.set_adapter("other")
    second = _logits(model)
    assert (second - first).abs().max() > 1e-4
    assert all(".other" in n for n, p in model.named_parameters() if p.requires_grad)
    model.set_adapter("default")
    torch.testing.assert_close(_logits(model), first)
    model.delete_adapter("other")
    assert not any(".other" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(_logits(model), first)


@pytest.mark.parametrize("name, arch", CASES)
def test_checkpointing_and_bf16_base(name, arch):
    model = _peft(name, arch)
    model.train()
    model(input_ids=X, labels=X).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model(input_ids=X, labels=X).loss.backward()
    for n, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, grad, rtol=1e-4, atol=1e-6)

    torch.manual_seed(0)
    half = get_peft_model(tiny_model(arch).to(torch.bfloat16).eval(), CONFIGS[name]())
    adapter = [p for n, p in half.named_parameters() if PREFIX[name] in n]
    assert adapter and all(p.dtype == torch.float32 for p in adapter)
    logits = _logits(half)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    half.train()
    half(input_ids=X, labels=X).loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_auto_peft_model_and_generate(name, tmp_path):
    base = tiny_model("llama").eval()
    base.save_pretrained(tmp_path / "base")
    base.name_or_path = str(tmp_path / "base")  # what get_peft_model records as base_model_name_or_path
    torch.manual_seed(0)
    model = get_peft_model(base, CONFIGS[name]())
    model.save_pretrained(tmp_path / "adapter")
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    assert isinstance(loaded, PeftModel)
    torch.testing.assert_close(_logits(loaded), _logits(model))
    generated = loaded.generate(input_ids=X[:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)
    assert torch.equal(generated, model.generate(input_ids=X[:1, :4], max_new_tokens=3, do_sample=False))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_trainer_saves_and_resumes(name, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    ids = torch.randint(0, 256, (8, 12), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})

    def run(max_steps, resume):
        model = _peft(name, "llama")
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=2,
                                 save_steps=2, learning_rate=1e-3, report_to=[], use_cpu=True, seed=0,
                                 logging_strategy="no", save_only_model=False)
        Trainer(model=model, args=args, train_dataset=data).train(resume_from_checkpoint=resume)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    straight = run(4, None)
    assert (tmp_path / "checkpoint-2" / "adapter_model.safetensors").exists()
    resumed = run(4, str(tmp_path / "checkpoint-2"))
    for n, value in straight.items():
        torch.testing.assert_close(resumed[n], value)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantized_base_is_refused(name):
    class Int8Params(torch.nn.Parameter):
        pass

    model = tiny_model("llama")
    for layer in model.model.layers:
        for proj in (layer.self_attn.v_proj, layer.mlp.down_proj):
            proj.weight = Int8Params(proj.weight.data)
    with pytest.raises(TypeError, match="quantized weight"):
        get_peft_model(model, CONFIGS[name]())
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())


_FRESH = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    cases = json.loads(sys.argv[1])
    try:
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cases[0][0]), cases[0][1])
        print("LOADED WITHOUT hf_effi")
    except Exception as error:
        print("WITHOUT:", type(error).__name__, error)
    import hf_effi  # registers the tuners
    for base_dir, adapter_dir, x_path, out_path in cases:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir).eval(), adapter_dir).eval()
        with torch.no_grad():
            torch.save(model(torch.load(x_path)).logits, out_path)
""")


@pytest.mark.slow
def test_fresh_process_load_after_import_hf_effi(tmp_path):
    """One subprocess for all three tuner families: loading fails before ``import hf_effi`` and works after it."""
    cases, expected = [], {}
    torch.save(X, tmp_path / "x.pt")
    for name in CONFIGS:
        for arch in ARCHS:
            case = tmp_path / f"{name}-{arch}"
            model = _peft(name, arch)
            tiny_model(arch).save_pretrained(case / "base")  # the same seeded weights the adapter sits on
            model.save_pretrained(case / "adapter")
            expected[case] = _logits(model)
            cases.append([str(case / "base"), str(case / "adapter"), str(tmp_path / "x.pt"), str(case / "out.pt")])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    run = subprocess.run([sys.executable, "-c", _FRESH, json.dumps(cases)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "LOADED WITHOUT" not in run.stdout and "WITHOUT:" in run.stdout, run.stdout
    assert "import hf_effi" in run.stdout, run.stdout  # the error tells the user what to do
    for case, logits in expected.items():
        torch.testing.assert_close(torch.load(case / "out.pt"), logits)
