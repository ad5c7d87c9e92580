"""Packing vs padding on a length-skewed dataset: training throughput (real tokens per second of forward+backward)
of a small Llama over one epoch, samples padded per batch vs packed with first-fit decreasing
(:func:`hf_effi.data.pack`, block-diagonal attention from restarting position ids).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import make_rows, mean_sd, parse_args, write_result  # noqa: E402

from hf_effi.data import PackedCollator, pack, padding_efficiency  # noqa: E402

NAME = "packing"
CLAIM = "Packing a length-skewed dataset (first-fit decreasing) trains more real tokens per second than padding."


def skewed_lengths(n: int, max_length: int, seed: int) -> list[int]:
    """Pareto-like lengths (many short samples, a long tail), as in instruction data; clipped to [8, max_length]."""
    rng = random.Random(seed)
    return [min(max_length, max(8, int(16 * rng.paretovariate(1.1)))) for _ in range(n)]


def padded_batches(samples: list[list[int]], batch_size: int) -> list[dict[str, torch.Tensor]]:
    batches = []
    for i in range(0, len(samples), batch_size):
        group = samples[i: i + batch_size]
        width = max(len(s) for s in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.smoke:
        n, max_length, batch_size, repeats = 24, 64, 4, 1
        shape = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=256)
    else:
        n, max_length, batch_size, repeats = 384, 512, 8, 3
        shape = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=688,
                     vocab_size=4096)
    lengths = skewed_lengths(n, max_length, seed=0)
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(1, shape["vocab_size"], (m,), generator=gen).tolist() for m in lengths]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=max_length, **shape)).train()

    padded = padded_batches(samples, batch_size)
    rows = pack([{"input_ids": s} for s in samples], max_length, strategy="ffd")
    pack_batch = max(1, round(batch_size * sum(lengths) / n / max_length))  # about the same tokens per step
    collate = PackedCollator()
    packed = [collate(list(rows.select(range(i, min(i + pack_batch, len(rows))))))
              for i in range(0, len(rows), pack_batch)]
    variants = {"padded per batch": padded, "packed (ffd)": packed}
    real_tokens = sum(lengths)
    slots = {name: sum(b["input_ids"].numel() for b in batches) for name, batches in variants.items()}

    def epoch(batches):
        for b in batches:
            model(**b, use_cache=False).loss.backward()
            model.zero_grad(set_to_none=True)

    seconds: dict[str, list[float]] = {name: [] for name in variants}
    epoch(padded[:1])
    epoch(packed[:1])  # warm up both paths
    for r in range(repeats):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            start = time.process_time()
            epoch(variants[name])
            seconds[name].append(time.process_time() - start)
    throughput = {name: real_tokens / mean_sd(s)[0] for name, s in seconds.items()}
    base = "padded per batch"
    out_rows = make_rows("real tokens / CPU second, fwd+bwd", "tokens/s", throughput, base)
    out_rows += make_rows("epoch CPU time", "s", {k: mean_sd(v)[0] for k, v in seconds.items()}, base,
                          sds={k: mean_sd(v)[1] for k, v in seconds.items()})
    out_rows += make_rows("steps per epoch", "count", {k: len(v) for k, v in variants.items()}, base)
    out_rows += make_rows("token slots computed", "count", slots, base)
    payload = {
        "claim": CLAIM,
        "config": {"samples": n, "max_length": max_length, "real_tokens": real_tokens, "padded_batch_size": batch_size,
                   "packed_rows_per_batch": pack_batch, "model": "LlamaForCausalLM", **shape,
                   "attn_implementation": model.config._attn_implementation, "repeats": repeats},
        "rows": out_rows,
        "notes": (
            f"Lengths: Pareto(1.1) x 16 clipped to [8, {max_length}] (mean {real_tokens / n:.0f} tokens). Padding "
            f"efficiency: padded {padding_efficiency(lengths, slots[base]):.3f}, packed "
            f"{padding_efficiency(lengths, slots['packed (ffd)']):.3f}. The packed rows attend block-diagonally "
            "(transformers builds the mask from the restarting position_ids), so packed and padded compute the same "
            "per-sample logits. CPU time per epoch, variants alternated, mean of the repeats."
        ),
        "details": {"cpu_seconds": seconds, "packed_rows": len(rows)},
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
