"""linearize(): conversion on tiny Llama/Mistral/Qwen2/Gemma and BERT, exactness with a full window, the new
parameters, layer subsets, and bad input leaving the model untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

import hf_effi.linear as lin
from hf_effi.linear.attention import LinearizedAttention, LinearizedEncoderAttention
from hf_effi.testing import tiny_model

ARCHS = ["llama", "mistral", "qwen2", "gemma"]
T = 12


def _ids(batch=2, length=T, seed=1):
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _snapshot(model):
    return type(model), {k: v.clone() for k, v in model.state_dict().items()}, \
        [type(m).__name__ for m in model.modules()], len(model.model._forward_pre_hooks)


def _bert(seed=0):
    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertModel(config).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_window_covering_the_sequence_is_exact_softmax(arch):
    model = tiny_model(arch).eval()
    ids = _ids()
    expected = model(ids).logits
    converted = lin.linearize(model, "lolcats", window=T, inplace=False)
    assert type(converted).__name__ == f"Linearized{type(model).__name__}"
    assert all(isinstance(layer.self_attn, LinearizedAttention) for layer in converted.model.layers)
    torch.testing.assert_close(converted(ids).logits, expected, atol=2e-5, rtol=1e-5)
    short = lin.linearize(model, "lolcats", window=3, inplace=False)
    assert (short(ids).logits - expected).abs().max() > 1e-3  # the linear part is really used


def _extra_model(arch):
    """Tiny Phi-3 (fused qkv_proj) and Qwen3 (q_norm/k_norm), outside hf_effi.testing's TINY_ARCHS."""
    from transformers import AutoModelForCausalLM, Phi3Config, Qwen3Config

    common = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=256, attn_implementation="eager")
    config = Phi3Config(pad_token_id=0, eos_token_id=1, bos_token_id=2, **common) if arch == "phi3" else \
        Qwen3Config(head_dim=16, **common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("arch", ["phi3", "qwen3"])
def test_fused_qkv_and_qk_norms_are_exact_with_a_full_window(arch):
    model = _extra_model(arch)
    ids = _ids()
    expected = model(ids).logits
    converted = lin.linearize(model, "lolcats", window=T)
    torch.testing.assert_close(converted(ids).logits, expected, atol=2e-5, rtol=1e-5)
    names = {n.split(".")[-2] for n, _ in converted.named_parameters() if ".self_attn." in n}
    assert ("qkv_proj" in names) == (arch == "phi3") and ("q_norm" in names) == (arch == "qwen3")


@pytest.mark.parametrize("method", ["lolcats", "hedgehog", "based", "liger", "elu", "relu"])
def test_every_method_converts_and_keeps_the_original_keys(method):
    model = tiny_model("llama").eval()
    original = dict(model.state_dict())
    converted = lin.linearize(model, method)
    assert converted is model and lin.is_linearized(model)
    state = model.state_dict()
    for key, value in original.items():  # q/k/v/o keep their names and tensors
        assert torch.equal(state[key], value)
    new_keys = sorted(set(state) - set(original))
    new_params = lin.linear_parameters(model)
    assert len(new_keys) == len(new_params)
    assert all(".self_attn.feature_map_" in k or k.endswith(".self_attn.window_factors") for k in new_keys)
    out = model(_ids()).logits
    assert out.shape == (2, T, 256) and torch.isfinite(out).all()
    assert model.config.hf_effi_linearization["method"] == method


def test_linearize_is_exported_at_the_top_level():
    import hf_effi

    assert hf_effi.linearize is lin.linearize and "linearize" in hf_effi.__all__
    assert {"lolcats", "hedgehog", "based", "liger", "elu", "relu"} == set(hf_effi.available()["linear_methods"])


def test_new_parameter_count_is_feature_maps_plus_window_weights():
    model = tiny_model("llama")  # 2 layers, 4 heads, head_dim 16
    lin.linearize(model, "lolcats", feature_dim=8)
    n = sum(p.numel() for p in lin.linear_parameters(model))
    assert n == 2 * (2 * 4 * 16 * 8 + 4)
    assert torch.allclose(torch.sigmoid(model.model.layers[0].self_attn.window_factors), torch.tensor(0.1))
    assert not lin.linear_parameters(lin.linearize(tiny_model("llama"), "liger"))  # Liger adds nothing


def test_layers_subset_keeps_softmax_elsewhere():
    model = tiny_model("qwen2").eval()
    ids = _ids()
    expected = model(ids).logits
    converted = lin.linearize(model, "lolcats", window=T, layers=[1], inplace=False)
    assert type(converted.model.layers[0].self_attn).__name__ == "Qwen2Attention"
    assert isinstance(converted.model.layers[1].self_attn, LinearizedAttention)
    assert converted.config.hf_effi_linearization["layers"] == [1]
    torch.testing.assert_close(converted(ids).logits, expected, atol=2e-5, rtol=1e-5)


def test_inplace_false_leaves_the_input_alone():
    model = tiny_model("llama")
    before = _snapshot(model)
    copy = lin.linearize(model, "hedgehog", inplace=False)
    assert copy is not model and lin.is_linearized(copy) and not lin.is_linearized(model)
    after = _snapshot(model)
    assert before[0] is after[0] and before[2] == after[2] and before[3] == after[3]


def test_bert_encoder_is_noncausal_and_ignores_padding():
    model = _bert()
    converted = lin.linearize(model, "hedgehog", inplace=False)
    assert all(isinstance(layer.attention.self, LinearizedEncoderAttention) for layer in converted.encoder.layer)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 5:] = 0
    out = converted(ids, attention_mask=mask).last_hidden_state
    other = ids.clone()
    other[0, 5:] = 7  # different padding tokens: the real positions must not notice
    torch.testing.assert_close(converted(other, attention_mask=mask).last_hidden_state[0, :5], out[0, :5])
    flipped = ids.clone()
    flipped[1, 6] = (ids[1, 6] + 1) % 128  # non-causal: a later token changes an earlier output
    assert not torch.allclose(converted(flipped, attention_mask=mask).last_hidden_state[1, 0], out[1, 0])


BAD = [
    ("unknown method", dict(method="lolcat"), "Did you mean 'lolcats'"),
    ("unknown feature map", dict(feature_map="hedghog"), "Unknown feature map 'hedghog'"),
    ("window 0", dict(window=0), r"window=0 must be an int >= 1"),
    ("window float", dict(window=2.5), r"window=2.5 must be an int >= 1"),
    ("window on pure linear", dict(method="hedgehog", window=8), "pure linear attention without a window"),
    ("layer out of range", dict(layers=[0, 2]), r"2 is not a layer index in \[0, 1\]"),
    ("negative layer", dict(layers=[-1]), r"-1 is not a layer index"),
    ("duplicate layer", dict(layers=[1, 1]), "lists a layer twice"),
    ("empty layers", dict(layers=[]), "converts nothing"),
    ("feature_dim on elu", dict(method="elu", feature_dim=8), "only applies to maps with weights"),
    ("learnable map for liger", dict(method="liger", feature_map="hedgehog"), "adds no parameters"),
    ("negative sinks", dict(sinks=-1), r"sinks=-1 must be an int >= 0"),
    ("sinks on a gated method", dict(method="liger", sinks=4), "attention sinks belong to the window hybrids"),
]


@pytest.mark.parametrize("kwargs, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_before_touching_the_model(kwargs, match):
    model = tiny_model("llama")
    before = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        lin.linearize(model, **kwargs)
    after = _snapshot(model)
    assert before[0] is after[0] and before[2] == after[2] and before[3] == after[3]
    assert all(torch.equal(before[1][k], v) for k, v in after[1].items())


def test_already_linearized_is_rejected():
    model = lin.linearize(tiny_model("llama"), "lolcats")
    with pytest.raises(ValueError, match="already linearized"):
        lin.linearize(model, "liger")


def test_unsupported_architectures_name_what_is_missing():
    with pytest.raises(ValueError, match="has no q_proj, k_proj, v_proj.*fused query_key_value"):
        lin.linearize(tiny_model("gpt_neox"))
    with pytest.raises(ValueError, match="bidirectional encoder: use method='hedgehog'"):
        lin.linearize(_bert(), "lolcats")


def test_a_bad_later_layer_leaves_earlier_layers_unconverted():
    model = tiny_model("llama")
    model.model.layers[1].self_attn.attn_logit_softcapping = 30.0
    before = _snapshot(model)
    with pytest.raises(ValueError, match="layer 1 attention .* soft-capping"):
        lin.linearize(model)
    after = _snapshot(model)
    assert before[0] is after[0] and before[2] == after[2] and before[3] == after[3]


def test_a_failure_while_swapping_restores_every_layer(monkeypatch):
    model = tiny_model("llama")
    before = _snapshot(model)

    def broken_hook(*args, **kwargs):
        raise RuntimeError("hook registration failed")

    monkeypatch.setattr(model.model, "register_forward_pre_hook", broken_hook)
    with pytest.raises(RuntimeError, match="hook registration failed"):
        lin.linearize(model)
    after = _snapshot(model)
    assert before[0] is after[0] and before[2] == after[2] and not lin.is_linearized(model)
    assert "hf_effi_linearization" not in model.config.to_dict()


def test_liger_is_half_gated_linear_half_sliding_window_gated_by_the_key_projection():
    from hf_effi.kernels import linear_attn as ops

    model = lin.linearize(tiny_model("llama").eval(), "liger", window=3)
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, T, 64, generator=torch.Generator().manual_seed(3))
    position_ids = torch.arange(T)[None]
    cos, sin = model.model.rotary_emb(x, position_ids)
    out, _ = attn(x, position_embeddings=(cos, sin))

    def heads(proj):
        return proj(x).view(1, T, -1, 16).transpose(1, 2).repeat_interleave(attn.num_key_value_groups, dim=1)

    q_pre, k_pre, v = attn.q_proj(x).view(1, T, 4, 16).transpose(1, 2), heads(attn.k_proj), heads(attn.v_proj)
    q, k = attn.rotary_fn(q_pre, k_pre, cos, sin)
    gla, _ = ops.gated_linear_attention(q_pre.softmax(-1), k_pre.softmax(-1), v,
                                        torch.nn.functional.logsigmoid(k_pre) / 16, scale=1.0)
    swa, _ = ops.sliding_window_attention(q, k, v, window=3, scale=16 ** -0.5)
    expected = attn.o_proj((0.5 * gla + 0.5 * swa).transpose(1, 2).reshape(1, T, -1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_the_window_weight_matters_only_when_tokens_leave_the_window():
    ids = _ids()
    for window, should_change in ((4, True), (T, False)):
        model = lin.linearize(tiny_model("llama").eval(), "lolcats", window=window)
        before = model(ids).logits
        with torch.no_grad():
            model.model.layers[0].self_attn.window_factors.add_(3.0)  # gamma 0.1 -> 0.69
        change = (model(ids).logits - before).abs().max().item()
        assert (change > 1e-3) if should_change else (change < 2e-5), (window, change)
