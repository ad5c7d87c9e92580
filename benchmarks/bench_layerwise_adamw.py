"""Layer-wise (update-inside-backward) AdamW vs AdamW: peak memory of a training step, identical state and result.

The layer-wise mode (``hf_effi.make("adamw", ..., layerwise=True)``) steps each parameter from its
post-accumulate-grad hook and frees its gradient at once, so the full gradient never exists (the per-layer update
of GaLore, Zhao et al., arXiv 2403.03507; LOMO, Lv et al., arXiv 2306.09782). Measured on the GaLore 60M Llama shape:
peak memory of one full training step (forward, backward, optimizer) with the optimizer state already allocated,
the optimizer-state bytes, and the step time; both variants start from the same weights and must end equal.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import interleaved, make_rows, parse_args, write_result  # noqa: E402

import hf_effi  # noqa: E402
from hf_effi.utils.memory import optimizer_state_bytes, peak_memory  # noqa: E402

NAME = "layerwise_adamw"
CLAIM = "Updating inside backward (layer-wise AdamW) lowers the peak memory of a training step; state and result equal AdamW."
VARIANTS = ("adamw", "adamw layerwise")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_effi.testing import shape_60m

    config = (
        LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=172, vocab_size=512)
        if args.smoke
        else shape_60m()
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    models = {v: copy.deepcopy(base) for v in VARIANTS}
    del base
    # foreach=False on both: the same per-tensor kernel, so the two runs can be compared bit for bit.
    optimizers = {
        v: hf_effi.make_optimizer(
            "adamw", models[v], lr=1e-3, weight_decay=0.1, foreach=False, layerwise="layerwise" in v
        )
        for v in VARIANTS
    }
    batch, seq = (1, 8) if args.smoke else (1, 64)
    repeats = 2 if args.smoke else 7
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))

    def train_step(variant: str) -> None:
        model, opt = models[variant], optimizers[variant]
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for v in VARIANTS:
        train_step(v)  # allocates the optimizer state, so the peak below is a steady-state step
    state = {v: optimizer_state_bytes(optimizers[v]) for v in VARIANTS}
    peaks = {v: peak_memory(train_step, v, modules=[models[v]], optimizers=[optimizers[v]]) for v in VARIANTS}
    timing = interleaved({v: (lambda v=v: train_step(v)) for v in VARIANTS}, repeats=repeats, warmup=0)
    # Every variant ran the same number of steps on the same batch: the parameters must agree exactly.
    ref = dict(models["adamw"].named_parameters())
    max_diff = max((p - ref[n]).abs().max().item() for n, p in models["adamw layerwise"].named_parameters())
    if max_diff != 0.0:
        raise RuntimeError(f"layer-wise AdamW diverged from AdamW by {max_diff}")

    rows = make_rows("training-step peak above start", "bytes", {v: r.peak_bytes for v, r in peaks.items()}, "adamw")
    grads = (
        {v: r.breakdown.get("Gradient", 0) for v, r in peaks.items()} if all(r.breakdown for r in peaks.values()) else {}
    )
    if grads:
        rows += make_rows("gradients live at the peak (MemTracker)", "bytes", grads, "adamw")
    rows += make_rows("optimizer state", "bytes", state, "adamw")
    rows += make_rows("training step CPU time, median", "s", timing["cpu_median"], "adamw")
    rows += make_rows("training step wall time, median", "s", timing["median"], "adamw")
    n_params = sum(p.numel() for p in models["adamw"].parameters())
    payload = {
        "claim": CLAIM,
        "config": {
            "model": "LlamaForCausalLM",
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "parameters": n_params,
            "dtype": "float32",
            "batch": [batch, seq],
            "repeats": repeats,
        },
        "rows": rows,
        "notes": (
            "Peak: torch MemTracker over one forward+backward+step, minus what was live before it (parameters, "
            "optimizer state); the layer-wise mode frees each gradient right after its update, so gradients never "
            "all exist. Parameters after all steps are bit-identical between the variants (checked). Step time: "
            f"median of {repeats} interleaved steps; CPU time is the steadier figure on a shared machine."
        ),
        "details": {
            "breakdown_at_peak": {v: r.breakdown for v, r in peaks.items()},
            "max_param_difference": max_diff,
            "step_cpu_samples_s": timing["cpu_samples"],
        },
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
