"""Decoding SmolLM2-135M-Instruct at long contexts: the original model's KV cache vs the linearized (LoLCATs) model's
fixed-size state. Per context length: cache bytes after the prompt, cache bytes added per generated token, and
decode time per token (greedy, batch 1, incremental). Quality is not measured here (see ``linearize_quality``).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import make_rows, parse_args, write_result  # noqa: E402

import hf_effi  # noqa: E402
from hf_effi.utils import reachable_tensor_bytes  # noqa: E402

NAME = "linear_decode"
CLAIM = (
    "A linearized SmolLM2 decodes with a cache of constant size (0 bytes added per token) and a per-token time that "
    "does not grow with the context; the original model's KV cache grows by a fixed amount per token."
)


@torch.no_grad()
def decode(model, context: int, new_tokens: int, vocab: int) -> dict[str, float]:
    """Prefill ``context`` tokens, then ``new_tokens`` greedy steps; cache bytes and per-step CPU seconds."""
    gen = torch.Generator().manual_seed(context)
    prompt = torch.randint(0, vocab, (1, context), generator=gen)
    out = model(input_ids=prompt, use_cache=True)
    cache = out.past_key_values
    after_prompt = reachable_tensor_bytes(cache)
    token = out.logits[:, -1:].argmax(-1)
    steps = []
    for _ in range(new_tokens):
        start = time.process_time()
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        steps.append(time.process_time() - start)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    after = reachable_tensor_bytes(cache)
    return {"cache_after_prompt": after_prompt, "per_token": (after - after_prompt) / new_tokens,
            "step_seconds": statistics.median(steps[1:] if len(steps) > 1 else steps)}


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    if args.smoke:
        from hf_effi.testing import tiny_model

        original = tiny_model("llama", max_position_embeddings=512).eval()
        contexts, over_limit, new_tokens, window, source = [32, 64], [128], 4, 8, "tiny random Llama"
    else:
        from hf_effi.testing import load_smollm2

        original, _ = load_smollm2()
        original.eval()
        contexts, over_limit, new_tokens, window, source = [1024, 4096, 8192], [16384], 8, 64, "SmolLM2-135M-Instruct"
    linear = hf_effi.linearize(original, "lolcats", window=window, inplace=False).eval()
    vocab = original.config.vocab_size
    models = {"original (KV cache)": original, "lolcats (state + window)": linear}
    base = "original (KV cache)"
    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in models}
    for context in contexts + over_limit:
        for name, model in models.items():
            results[name][context] = decode(model, context, new_tokens, vocab)
    rows = []
    for context in contexts + over_limit:
        at = {name: r[context] for name, r in results.items()}
        suffix = f" @ {context} ctx" + (" (past the checkpoint's 8k limit)" if context in over_limit else "")
        rows += make_rows("cache bytes after prompt" + suffix, "bytes",
                          {n: v["cache_after_prompt"] for n, v in at.items()}, base)
        rows += make_rows("cache bytes added per token" + suffix, "bytes", {n: v["per_token"] for n, v in at.items()},
                          None)
        rows += make_rows("decode CPU time per token" + suffix, "s", {n: v["step_seconds"] for n, v in at.items()},
                          base)
    payload = {
        "claim": CLAIM,
        "config": {"model": source, "contexts": contexts, "memory_time_only": over_limit, "new_tokens": new_tokens,
                   "window": window, "batch": 1, "dtype": "float32", "device": "cpu"},
        "rows": rows,
        "notes": (
            "Cache bytes: unique tensor storages reachable from the past_key_values object after the prompt and after "
            f"{new_tokens} greedy tokens. Per-token time: median CPU time of the incremental steps after the first. "
            "The linearized model is the untrained swap (decode cost does not depend on training). Tokens are random "
            "ids; only sizes and times are measured. GPU: not measured, no GPU was lent to this run."
        ),
        "details": {name: {str(c): v for c, v in r.items()} for name, r in results.items()},
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
