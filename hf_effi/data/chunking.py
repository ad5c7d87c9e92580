"""Turn documents into fixed-length language-modelling examples: tokenize, join with eos, cut into chunks.

This is the plain "concatenate and chunk" scheme of GPT-style pretraining: documents are tokenized without
special tokens, each is followed by the eos token, the stream is cut into rows of exactly ``seq_len`` tokens
and the incomplete last row is dropped. Rows may start mid-document. (Packing that keeps documents whole and
builds per-document attention masks is a separate module of ``hf_effi.data``.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from datasets import Dataset

__all__ = ["chunk_token_stream", "tokenize_and_chunk", "tokenize_to_stream"]

_BATCH_DOCS = 64  # documents per tokenizer call: large enough for the Rust batch path, small enough to stop early


def tokenize_to_stream(texts: Sequence[str], tokenizer, *, max_tokens: int | None = None,
                       add_eos: bool = True) -> np.ndarray:
    """Tokenize ``texts`` in order and concatenate them, each followed by eos when ``add_eos``.

    Returns a 1-D int64 array of at most ``max_tokens`` token ids (all of them when None). Tokenization stops
    as soon as ``max_tokens`` are reached, so a small budget on a large corpus stays fast.
    """
    _check_texts(texts)
    if max_tokens is not None:
        _check_positive_int("max_tokens", max_tokens)
    eos = _eos_id(tokenizer) if add_eos else None
    pieces: list[np.ndarray] = []
    total = 0
    for start in range(0, len(texts), _BATCH_DOCS):
        batch = list(texts[start:start + _BATCH_DOCS])
        # verbose=False: documents longer than model_max_length are expected here, they are cut into chunks below
        encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        for ids in encoded:
            piece = np.asarray(ids + [eos] if eos is not None else ids, dtype=np.int64)
            pieces.append(piece)
            total += len(piece)
        if max_tokens is not None and total >= max_tokens:
            break
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return stream[:max_tokens] if max_tokens is not None else stream


def chunk_token_stream(stream: np.ndarray, seq_len: int, *, max_tokens: int | None = None) -> Dataset:
    """Cut a 1-D token stream into a ``Dataset`` of rows of exactly ``seq_len`` tokens; drop the remainder.

    Columns ``input_ids`` and ``labels`` (a copy: causal LMs in transformers shift labels themselves), both
    int64 sequences of length ``seq_len``; ``N = min(len(stream), max_tokens) // seq_len`` rows. The dataset's
    fingerprint is a hash of the tokens, so ``.map`` caches are reused across runs. Raises ``ValueError`` when
    not even one row fits.
    """
    _check_positive_int("seq_len", seq_len)
    stream = np.asarray(stream)
    if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
        raise ValueError(f"stream must be a 1-D integer array of token ids, got shape {stream.shape} and dtype "
                         f"{stream.dtype}: flatten it or build it with tokenize_to_stream")
    usable = len(stream)
    if max_tokens is not None:
        _check_positive_int("max_tokens", max_tokens)
        usable = min(usable, max_tokens)
    rows = usable // seq_len
    if rows == 0:
        raise ValueError(f"only {usable} tokens are available, fewer than seq_len={seq_len}, so no example fits: "
                         f"use a smaller seq_len, more text, or a larger max_tokens")
    ids = np.ascontiguousarray(stream[: rows * seq_len], dtype=np.int64)
    column = pa.FixedSizeListArray.from_arrays(pa.array(ids), seq_len)
    # Both columns share one Arrow buffer: labels cost no memory until someone changes them.
    table = pa.Table.from_arrays([column, column], names=["input_ids", "labels"])
    digest = hashlib.sha256(ids.tobytes() + int(seq_len).to_bytes(8, "little")).hexdigest()[:16]
    return Dataset(table, fingerprint=f"hf_effi-chunks-{digest}")


def tokenize_and_chunk(texts: Sequence[str], tokenizer, seq_len: int, *, max_tokens: int | None = None,
                       add_eos: bool = True) -> Dataset:
    """Tokenize ``texts``, join them with eos and cut the stream into rows of exactly ``seq_len`` tokens.

    Args:
        texts: the documents, in the order they are concatenated (a list of str, not one str).
        tokenizer: a transformers tokenizer; it needs an eos token when ``add_eos``.
        seq_len: tokens per row.
        max_tokens: use at most this many tokens of the stream (None: all).
        add_eos: append the eos token after each document.

    Returns:
        A ``datasets.Dataset`` with int64 columns ``input_ids`` and ``labels`` (equal), each row of length
        ``seq_len``; the incomplete last row is dropped. The same inputs give the same rows and fingerprint.
    """
    _check_positive_int("seq_len", seq_len)
    stream = tokenize_to_stream(texts, tokenizer, max_tokens=max_tokens, add_eos=add_eos)
    return chunk_token_stream(stream, seq_len)


def _check_texts(texts: object) -> None:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of str (one per document), got {type(texts).__name__}: "
                        f"wrap a single document as [text]")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is a {type(texts[bad]).__name__}, expected str: decode or convert it first")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(f"add_eos=True needs a tokenizer with an eos token, but {type(tokenizer).__name__} has "
                         f"eos_token_id=None: set tokenizer.eos_token or pass add_eos=False")
    return int(eos)
