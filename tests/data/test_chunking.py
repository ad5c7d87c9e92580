"""Tokenize-and-chunk: exact rows on a byte tokenizer, lengths, caps, determinism, errors, cached streams."""

import numpy as np
import pytest
import torch

from hf_effi.data.chunking import chunk_token_stream, tokenize_and_chunk, tokenize_to_stream
from hf_effi.data.corpora import corpus_document_names, load_corpus
from hf_effi.data.token_cache import corpus_token_stream, shuffled_order
from hf_effi.data.tokenizer import byte_tokenizer

EOS = 256


def test_rows_are_documents_joined_by_eos_and_remainder_dropped():
    ds = tokenize_and_chunk(["abc", "de", "f"], byte_tokenizer(), 3)
    # stream a b c EOS d e EOS f EOS -> three full rows
    assert ds["input_ids"] == [[97, 98, 99], [EOS, 100, 101], [EOS, 102, EOS]]
    assert ds["labels"] == ds["input_ids"]
    ds = tokenize_and_chunk(["abc", "de"], byte_tokenizer(), 3)
    assert ds["input_ids"] == [[97, 98, 99], [EOS, 100, 101]]  # trailing EOS dropped


def test_add_eos_false_and_max_tokens():
    tok = byte_tokenizer()
    assert tokenize_and_chunk(["abc", "def"], tok, 2, add_eos=False)["input_ids"] == [[97, 98], [99, 100], [101, 102]]
    assert tokenize_and_chunk(["abcdefgh"], tok, 2, max_tokens=5)["input_ids"] == [[97, 98], [99, 100]]
    assert tokenize_to_stream(["abc", "def"], tok, max_tokens=5).tolist() == [97, 98, 99, EOS, 100]


def test_real_text_rows_have_exact_length_and_torch_format():
    texts = load_corpus("python_docs", "eval")
    stream = tokenize_to_stream(texts, byte_tokenizer())
    assert len(stream) == sum(len(t.encode("utf-8")) + 1 for t in texts)
    ds = chunk_token_stream(stream, 64)
    assert len(ds) == len(stream) // 64
    ds.set_format("torch")
    batch = ds[:4]
    assert batch["input_ids"].shape == (4, 64) and batch["input_ids"].dtype == torch.int64
    assert torch.equal(batch["input_ids"], batch["labels"])
    assert batch["input_ids"].flatten().tolist() == stream[:256].tolist()


def test_deterministic_fingerprint():
    tok = byte_tokenizer()
    a = tokenize_and_chunk(["some text here"], tok, 4)
    b = tokenize_and_chunk(["some text here"], tok, 4)
    c = tokenize_and_chunk(["other text here"], tok, 4)
    assert a._fingerprint == b._fingerprint != c._fingerprint
    assert a["input_ids"] == b["input_ids"]


def test_bad_arguments():
    tok = byte_tokenizer()
    with pytest.raises(TypeError, match=r"wrap a single document as \[text\]"):
        tokenize_and_chunk("just one string", tok, 4)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tokenize_and_chunk(["ok", b"bytes"], tok, 4)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="seq_len must be a positive int"):
            tokenize_and_chunk(["abc"], tok, bad)
    with pytest.raises(ValueError, match="fewer than seq_len=100"):
        tokenize_and_chunk(["abc"], tok, 100)
    with pytest.raises(ValueError, match="max_tokens"):
        tokenize_and_chunk(["abc"], tok, 2, max_tokens=0)
    with pytest.raises(ValueError, match="1-D integer"):
        chunk_token_stream(np.zeros((2, 3), dtype=np.int64), 2)


def test_missing_eos_is_reported():
    tok = byte_tokenizer()
    tok.eos_token = None
    with pytest.raises(ValueError, match="add_eos=False"):
        tokenize_and_chunk(["abc"], tok, 2)


def test_shuffled_order_is_a_pinned_permutation():
    names = ["a", "b", "c", "d"]
    assert shuffled_order(names, 0) == [3, 0, 2, 1]  # pinned: the same on every machine
    assert shuffled_order(names, 1) == [3, 0, 1, 2]
    big = [f"doc{i}" for i in range(100)]
    assert sorted(shuffled_order(big, 7)) == list(range(100))


def test_corpus_token_stream_is_cached_and_matches_direct_tokenization(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_EFFI_CACHE", str(tmp_path))
    tok = byte_tokenizer()
    direct = tokenize_to_stream(load_corpus("python_docs", "eval"), tok)
    first = corpus_token_stream("python_docs", "eval", tok)
    files = list((tmp_path / "tokens").glob("python_docs-eval-py*.npy"))
    assert len(files) == 1 and np.array_equal(first, direct)
    assert np.array_equal(corpus_token_stream("python_docs", "eval", tok), direct)  # from the file
    shuffled = corpus_token_stream("python_docs", "eval", tok, shuffle_seed=3)
    order = shuffled_order(corpus_document_names("python_docs", "eval"), 3)
    texts = load_corpus("python_docs", "eval")
    assert np.array_equal(shuffled, tokenize_to_stream([texts[i] for i in order], tok))
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 2
    with pytest.raises(ValueError, match="valid splits"):
        corpus_token_stream("python_docs", "validation", tok)
