"""Bad input to MoRA / PMSS / SVFit gets a one-line error naming the argument and the fix; nothing half-applied."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from hf_effi.peft import MoRAConfig, PMSSConfig, SVFitConfig
from hf_effi.peft.mora import MoRALinear
from hf_effi.testing import tiny_model

X = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
CONFIG_CLASSES = [MoRAConfig, PMSSConfig, SVFitConfig]


def _untouched(model, reference_logits, state_keys):
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules()), "an adapter layer was left behind"
    assert list(model.state_dict()) == state_keys
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=X).logits, reference_logits, rtol=0, atol=0)


def _fresh():
    model = tiny_model("llama").eval()
    with torch.no_grad():
        ref = model(input_ids=X).logits
    return model, ref, list(model.state_dict())


@pytest.mark.parametrize("config_cls", CONFIG_CLASSES)
def test_targets_that_match_nothing(config_cls):
    model, ref, keys = _fresh()
    with pytest.raises(ValueError, match=r"target_modules=\['nope'\] matched no module of LlamaForCausalLM"):
        get_peft_model(model, config_cls(r=2, target_modules=["nope"]))
    _untouched(model, ref, keys)


@pytest.mark.parametrize("config_cls", CONFIG_CLASSES)
def test_non_linear_targets(config_cls):
    model, ref, keys = _fresh()
    with pytest.raises(TypeError, match=r"'model.embed_tokens' is Embedding, but .* adapts nn.Linear layers only"):
        get_peft_model(model, config_cls(r=2, target_modules=["q_proj", "embed_tokens"]))
    _untouched(model, ref, keys)


@pytest.mark.parametrize(
    "config, message",
    [  # q_proj (64->64) would accept each r; v_proj (64->32) does not, so a partial apply would show
        (
            MoRAConfig(r=12, target_modules=["q_proj", "v_proj"]),
            r"MoRA: r=12 gives r_hat=34 for .*v_proj.*min\(in, out\)=32\]; choose a smaller r",
        ),
        (PMSSConfig(r=40, target_modules=["q_proj", "v_proj"]), r"PMSS: r=40 exceeds min\(in, out\)=32 of .*v_proj"),
        (SVFitConfig(r=40, target_modules=["q_proj", "v_proj"]), r"SVFit: r=40 exceeds min\(in, out\)=32 of .*v_proj"),
    ],
    ids=["mora", "pmss", "svfit"],
)
def test_rank_larger_than_the_layer_allows(config, message):
    model, ref, keys = _fresh()
    with pytest.raises(ValueError, match=message):
        get_peft_model(model, config)
    _untouched(model, ref, keys)


@pytest.mark.parametrize("config_cls", CONFIG_CLASSES)
def test_bad_second_adapter_leaves_the_first(config_cls):
    model = get_peft_model(tiny_model("llama").eval(), config_cls(r=2, init_weights=False, target_modules=["q_proj"]))
    with torch.no_grad():
        out = model(input_ids=X).logits
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match="exceeds|outside"):
        model.add_adapter("big", config_cls(r=60, target_modules=["q_proj", "v_proj"]))
    assert "big" not in model.peft_config and [n for n, _ in model.named_parameters()] == names
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=X).logits, out, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MoRAConfig(r=0), r"r=0: must be a positive int"),
        (lambda: MoRAConfig(mora_type=3), r"mora_type=3: use 1 \(sharing, large r\) or 6 \(RoPE, small r\)"),
        (lambda: PMSSConfig(r=-1), r"r=-1: must be a positive int"),
        (lambda: SVFitConfig(r=2.5), r"r=2.5: must be a positive int"),
        (lambda: SVFitConfig(target_parameters=["mlp.experts.gate_up_proj"]), r"target_parameters: SVFit adapts"),
    ],
)
def test_bad_config_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


class _FakeBnbLinear4bit(nn.Linear):
    """Stands in for bitsandbytes.nn.Linear4bit (not installed on CPU CI): same module path, Linear subclass."""


_FakeBnbLinear4bit.__module__ = "bitsandbytes.nn.modules"


@pytest.mark.parametrize("config_cls", CONFIG_CLASSES)
def test_quantized_base_is_refused(config_cls):
    model, ref, keys = _fresh()
    attn = model.model.layers[1].self_attn
    fake = _FakeBnbLinear4bit(64, 64, bias=False)
    fake.load_state_dict(attn.q_proj.state_dict())
    attn.q_proj = fake
    with pytest.raises(TypeError, match=r"'model.layers.1.self_attn.q_proj' is a quantized layer .*bitsandbytes"):
        get_peft_model(model, config_cls(r=2, target_modules=["q_proj"]))
    _untouched(model, ref, keys)


def test_broken_adapter_refuses_safe_merge():
    layer = MoRALinear(nn.Linear(16, 16), "default", MoRAConfig(r=2, init_weights=False))
    with torch.no_grad():
        layer.mora_M["default"][0, 0] = float("nan")
    w0 = layer.base_layer.weight.clone()
    with pytest.raises(ValueError, match="NaNs detected in the merged weights: adapter 'default'"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, w0) and not layer.merged
