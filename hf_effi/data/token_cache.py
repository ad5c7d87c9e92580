"""Tokenized corpora cached on disk, so a benchmark task is built in about a second after the first time.

The cache key holds everything the tokens depend on: the corpus text (its SHA-256 from ``corpus_info``, which
also pins the Python version), the split, the document order, the tokenizer's full definition and ``add_eos``.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np

from hf_effi.data.cache import cache_key, cached_file, hf_effi_cache_dir
from hf_effi.data.chunking import tokenize_to_stream
from hf_effi.data.corpora import SPLITS, corpus_document_names, corpus_info, load_corpus
from hf_effi.data.tokenizer import tokenizer_fingerprint

__all__ = ["corpus_token_stream", "shuffled_order"]

_FORMAT = 1


def shuffled_order(names: list[str], seed: int) -> list[int]:
    """A permutation of ``range(len(names))`` fixed by ``seed`` and the names alone.

    Documents are sorted by SHA-256 of ``"{seed}:{name}"``: unlike a seeded RNG permutation this cannot change
    with a numpy or torch release, so the order is the same on every machine.
    """
    def rank(i: int) -> bytes:
        return hashlib.sha256(f"{seed}:{names[i]}".encode()).digest()

    return sorted(range(len(names)), key=rank)


def corpus_token_stream(corpus: str, split: str, tokenizer, *, shuffle_seed: int | None = None,
                        add_eos: bool = True) -> np.ndarray:
    """All documents of ``load_corpus(corpus, split)`` tokenized and joined (eos after each), cached on disk.

    Args:
        corpus: a name from ``corpus_names()``.
        split: ``"train"`` or ``"eval"``.
        tokenizer: a fast tokenizer (its definition is hashed into the cache key).
        shuffle_seed: None keeps documents sorted by name; an int orders them by ``shuffled_order(names, seed)``.
        add_eos: append the tokenizer's eos after each document.

    Returns:
        A 1-D int64 array of token ids: the stream ``chunk_token_stream`` cuts into rows.
    """
    if shuffle_seed is not None and (isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int)):
        raise TypeError(f"shuffle_seed must be an int or None, got {shuffle_seed!r}")
    info = corpus_info(corpus)  # validates corpus
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; valid splits are {list(SPLITS)}")
    key = cache_key(_FORMAT, info["sha256"][split], split, shuffle_seed, tokenizer_fingerprint(tokenizer), add_eos)
    version = "{}.{}".format(*sys.version_info[:2])
    path = hf_effi_cache_dir() / "tokens" / f"{corpus}-{split}-py{version}-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False).astype(np.int64)
    texts = load_corpus(corpus, split)
    if shuffle_seed is not None:
        texts = [texts[i] for i in shuffled_order(corpus_document_names(corpus, split), shuffle_seed)]
    stream = tokenize_to_stream(texts, tokenizer, add_eos=add_eos)
    small = stream.size == 0 or int(stream.max()) < 2**31  # int32 halves the file for every real vocabulary

    def write(tmp: Path) -> None:
        np.save(tmp, stream.astype(np.int32 if small else np.int64), allow_pickle=False)

    try:
        cached_file(path, write)
    except OSError as err:  # a read-only cache only costs speed; say so instead of failing
        warnings.warn(f"could not cache tokens at {path} ({err}); set HF_EFFI_CACHE to a writable folder",
                      stacklevel=2)
    return stream
