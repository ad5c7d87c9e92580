"""Data for training and benchmarks, all offline: real-text corpora from the Python installation, tokenizers,
chunking into fixed-length examples, packing variable-length samples, and the on-disk cache they share."""

from hf_effi.data.cache import cache_key, cached_dir, cached_file, hf_effi_cache_dir
from hf_effi.data.chunking import chunk_token_stream, tokenize_and_chunk, tokenize_to_stream
from hf_effi.data.corpora import (
    EVAL_FRACTION,
    SPLITS,
    corpus_document_names,
    corpus_info,
    corpus_names,
    is_eval_document,
    load_corpus,
)
from hf_effi.data.packing import STRATEGIES, PackedCollator, pack, pack_bins, padding_efficiency
from hf_effi.data.token_cache import corpus_token_stream, shuffled_order
from hf_effi.data.tokenizer import (
    SMOLLM2_GGUF_FILE,
    byte_tokenizer,
    load_tokenizer,
    require_smollm2,
    smollm2_available,
    smollm2_cache_dir,
    smollm2_gguf_path,
    tokenizer_fingerprint,
)

__all__ = [
    "EVAL_FRACTION",
    "PackedCollator",
    "STRATEGIES",
    "SMOLLM2_GGUF_FILE",
    "SPLITS",
    "byte_tokenizer",
    "cache_key",
    "cached_dir",
    "cached_file",
    "chunk_token_stream",
    "corpus_document_names",
    "corpus_info",
    "corpus_names",
    "corpus_token_stream",
    "hf_effi_cache_dir",
    "is_eval_document",
    "load_corpus",
    "load_tokenizer",
    "pack",
    "pack_bins",
    "padding_efficiency",
    "require_smollm2",
    "shuffled_order",
    "smollm2_available",
    "smollm2_cache_dir",
    "smollm2_gguf_path",
    "tokenize_and_chunk",
    "tokenize_to_stream",
    "tokenizer_fingerprint",
]
