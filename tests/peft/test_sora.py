"""SoRA: the gated LoRA forward against a hand computation, the proximal step and its schedule, the Trainer
callback, export to a plain peft LoRA loaded by a process that never imports hf_effi, and bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import get_peft_model
from torch import nn

from hf_effi.peft.sora import (
    SoRACallback,
    SoRAConfig,
    SoRALayer,
    SoRALinear,
    export_lora,
    soft_threshold_,
    sora_gate_sparsity,
    sora_proximal_step,
    sora_threshold,
)
from hf_effi.testing import tiny_model


def test_forward_matches_hand_computation():
    base = nn.Linear(7, 5)
    layer = SoRALinear(base, "default", r=3, lora_alpha=6.0, gate_init="normal", init_weights=False)
    x = torch.randn(2, 4, 7)
    a, b, g = layer.sora_A["default"], layer.sora_B["default"], layer.sora_gate["default"]
    expected = base(x) + 2.0 * torch.einsum("or,r,ri,bti->bto", b, g, a, x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    dense = base.weight + 2.0 * b @ torch.diag(g) @ a
    torch.testing.assert_close(layer.get_delta_weight("default"), dense - base.weight, rtol=1e-5, atol=1e-6)


def test_soft_threshold_equals_formula():
    t = torch.tensor([-2.0, -0.3, 0.0, 0.1, 0.5, 3.0])
    soft_threshold_(t, 0.4)
    torch.testing.assert_close(t, torch.tensor([-1.6, 0.0, 0.0, 0.0, 0.1, 2.6]))
    with pytest.raises(ValueError, match="threshold"):
        soft_threshold_(t, -1.0)


def test_proximal_step_only_touches_trainable_gates():
    model = get_peft_model(tiny_model("llama"), SoRAConfig(r=4, gate_init="ones"))
    layers = [m for m in model.modules() if isinstance(m, SoRALayer)]
    layers[0].sora_gate["default"].data = torch.tensor([0.05, -0.05, 2.0, -3.0])
    nnz = sora_proximal_step(model, 0.1)
    torch.testing.assert_close(layers[0].sora_gate["default"].data, torch.tensor([0.0, 0.0, 1.9, -2.9]))
    assert nnz == 4 * len(layers) - 2
    assert sora_gate_sparsity(model) == {"nonzero": nnz, "total": 4 * len(layers)}
    model.base_model.set_requires_grad("default", requires_grad=False)
    with pytest.raises(ValueError, match="no trainable SoRA gate"):
        sora_proximal_step(model, 0.1)


def test_threshold_schedules():
    assert sora_threshold(5, 10, xi=1e-3) == 1e-3
    kw = dict(xi=1e-3, max_xi=4e-3, levels=4)
    assert [sora_threshold(s, 8, schedule="linear", **kw) for s in (0, 2, 4, 7)] == pytest.approx(
        [1e-3, 2e-3, 3e-3, 4e-3])
    assert sora_threshold(7, 8, schedule="exp_linear", **kw) == pytest.approx(4e-3)
    assert sora_threshold(2, 8, schedule="exp_linear", **kw) == pytest.approx(1e-3 * 4 ** (1 / 3))
    log_mid = math.log(math.exp(1e-3) + (math.exp(4e-3) - math.exp(1e-3)) / 3)
    assert sora_threshold(2, 8, schedule="log_linear", **kw) == pytest.approx(log_mid)
    with pytest.raises(ValueError, match="schedule='cosine' is not one of"):
        sora_threshold(0, 8, schedule="cosine")
    with pytest.raises(ValueError, match="needs max_xi"):
        SoRACallback(1e-3, schedule="linear")


@pytest.mark.parametrize("xi, all_zero", [(10.0, True), (0.0, False)], ids=["xi10", "xi0"])
def test_callback_inside_trainer(tmp_path, xi, all_zero):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(tiny_model("llama"), SoRAConfig(r=4))
    ids = torch.randint(0, 256, (4, 16)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    callback = SoRACallback(xi)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", learning_rate=1e-3, use_cpu=True, logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    sparsity = sora_gate_sparsity(model)
    assert callback.last_threshold == xi
    assert callback.last_nonzero == sparsity["nonzero"]
    assert (sparsity["nonzero"] == 0) == all_zero


_LOAD_WITHOUT_HF_EFFI = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
    model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
    assert not any(name.startswith("hf_effi") for name in sys.modules), "hf_effi was imported"
    with torch.no_grad():
        logits = model(torch.load(sys.argv[3])).logits
    torch.save(logits, sys.argv[4])
""")


@pytest.mark.slow
def test_export_lora_loads_with_stock_peft(tmp_path):
    base = tiny_model("llama").eval()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, SoRAConfig(r=4, init_weights=False, target_modules=["q_proj", "v_proj"])).eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SoRALayer)}
    names = sorted(layers)
    layers[names[0]].sora_gate["default"].data[[0, 2]] = 0.0  # rank 2 left
    layers[names[1]].sora_gate["default"].data.zero_()  # dropped entirely
    x = torch.randint(0, 256, (2, 11))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x).logits
    out = export_lora(model, tmp_path / "lora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert len(config["target_modules"]) == len(names) - 1
    assert list(config["rank_pattern"].values()) == [2]
    subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_HF_EFFI, str(tmp_path / "base"), str(out),
                    str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], check=True, timeout=120)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-4, atol=1e-5)


def test_export_lora_refuses_all_zero_and_merged(tmp_path):
    model = get_peft_model(tiny_model("llama"), SoRAConfig(r=2, init_weights=False))
    model.merge_adapter()
    with pytest.raises(ValueError, match="unmerge_adapter"):
        export_lora(model, tmp_path)
    model.unmerge_adapter()
    sora_proximal_step(model, 1e9)
    with pytest.raises(ValueError, match="every SoRA gate is zero"):
        export_lora(model, tmp_path)


def _state(model):
    return {n: (type(m).__name__, tuple(p.shape for p in m.parameters(recurse=False))) for n, m in model.named_modules()}


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(r=65, target_modules=["q_proj", "v_proj"]), ValueError, "r=65 exceeds"),
    (dict(r=2, target_modules=["q_proj", "embed_tokens"]), TypeError, "only nn.Linear"),
    (dict(r=2, target_modules=["no_such_module"]), ValueError, "not found"),
], ids=["rank-too-large", "embedding", "no-match"])
def test_bad_targets_leave_model_unchanged(kwargs, error, match):
    model = tiny_model("llama")
    before = _state(model)
    with pytest.raises(error, match=match):
        get_peft_model(model, SoRAConfig(**kwargs))
    assert _state(model) == before
    assert not any(isinstance(m, SoRALayer) for m in model.modules())


def test_quantized_base_is_refused():
    class Params4bit(nn.Parameter):
        pass

    model = tiny_model("llama")
    proj = model.model.layers[1].self_attn.v_proj
    proj.weight = Params4bit(proj.weight.data)
    with pytest.raises(TypeError, match="quantized weight"):
        get_peft_model(model, SoRAConfig(r=2))
    assert not any(isinstance(m, SoRALayer) for m in model.modules())


@pytest.mark.parametrize("kwargs, match", [(dict(r=0), "r=0"), (dict(gate_init="zeros"), "gate_init"),
                                           (dict(bias="all"), "bias")])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoRAConfig(**kwargs)


def test_config_docstring_lists_every_field():
    from peft.config import PeftConfig

    own = {f.name for f in dataclasses.fields(SoRAConfig)} - {f.name for f in dataclasses.fields(PeftConfig)}
    assert all("help" in SoRAConfig.__dataclass_fields__[name].metadata for name in own)
    missing = [name for name in own - {"target_parameters"} if f"{name}:" not in SoRAConfig.__doc__]
    assert not missing, missing
