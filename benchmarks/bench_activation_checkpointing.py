"""Activation checkpointing on a small Llama: bytes saved for backward, peak memory of forward+backward, and
step time, with and without ``activation_checkpointing_enable()`` (``gradient_checkpointing_enable`` before
transformers 5). Checkpointing keeps each decoder layer's input and recomputes the rest in backward (Chen et al.,
"Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174; per-layer arithmetic in arXiv:2205.05198).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import interleaved, make_rows, mean_sd, parse_args, ratio, write_result  # noqa: E402

from hf_effi.utils.memory import peak_memory, saved_activation_bytes  # noqa: E402

NAME = "activation_checkpointing"
CLAIM = "Activation checkpointing cuts the bytes kept for backward and the fwd+bwd peak of a small Llama, at a step-time cost."


def _enable_checkpointing(model) -> None:
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.smoke:
        shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=86, vocab_size=256)
        batch, seq, repeats = 2, 16, 2
    else:
        shape = dict(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=688, vocab_size=4096
        )
        batch, seq, repeats = 4, 256, 9
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=max(seq, 64), **shape)
    plain = LlamaForCausalLM(config).train()
    checkpointed = copy.deepcopy(plain).train()
    _enable_checkpointing(checkpointed)
    models = {"no checkpointing": plain, "checkpointing": checkpointed}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)

    def loss_of(model):
        return model(input_ids=ids, labels=ids).loss

    def fwd_bwd(model):
        loss_of(model).backward()
        model.zero_grad(set_to_none=True)

    losses = {name: loss_of(m).item() for name, m in models.items()}
    if abs(losses["checkpointing"] - losses["no checkpointing"]) > 1e-5:
        raise RuntimeError(f"checkpointing changed the loss: {losses}")
    saved = {name: saved_activation_bytes(loss_of, m) for name, m in models.items()}
    peaks = {name: peak_memory(fwd_bwd, m, modules=[m]) for name, m in models.items()}
    timing = interleaved({name: (lambda m=m: fwd_bwd(m)) for name, m in models.items()}, repeats=repeats, warmup=1)
    # per-repeat ratios: both variants ran back to back in each repeat, so their ratio is the paired estimate
    pairs = zip(timing["cpu_samples"]["checkpointing"], timing["cpu_samples"]["no checkpointing"])
    paired_mean, paired_sd = mean_sd([ratio(c, p) for c, p in pairs])

    base = "no checkpointing"
    rows = make_rows("saved for backward (fwd+loss)", "bytes", saved, base)
    rows += make_rows("fwd+bwd peak above params", "bytes", {k: r.peak_bytes for k, r in peaks.items()}, base)
    rows += make_rows("fwd+bwd CPU time, median", "s", timing["cpu_median"], base)
    rows += make_rows("fwd+bwd wall time, median", "s", timing["median"], base)
    n_params = sum(p.numel() for p in plain.parameters())
    payload = {
        "claim": CLAIM,
        "config": {
            "model": "LlamaForCausalLM",
            **shape,
            "parameters": n_params,
            "batch": [batch, seq],
            "dtype": "float32",
            "attn_implementation": plain.config._attn_implementation,
            "repeats": repeats,
        },
        "rows": rows,
        "notes": (
            "Saved bytes: unique storages packed by saved_tensors_hooks during forward+loss, parameters excluded. "
            "Peak: torch MemTracker over forward+backward, minus the parameters and buffers live before the call "
            f"(the breakdown at the peak is in details). Step time: median of {repeats} interleaved fwd+bwd calls; "
            f"paired per-repeat CPU-time ratio checkpointing / plain = {paired_mean:.3f} ± {paired_sd:.3f} "
            "(mean ± sd); CPU time is the steadier figure on a shared machine."
        ),
        "details": {
            "loss": losses,
            "peak_breakdown_bytes": {k: r.breakdown for k, r in peaks.items()},
            "peak_baseline_bytes": {k: r.baseline_bytes for k, r in peaks.items()},
            "step_wall_samples_s": timing["samples"],
            "step_cpu_samples_s": timing["cpu_samples"],
            "paired_cpu_time_ratio_mean_sd": [paired_mean, paired_sd],
        },
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
