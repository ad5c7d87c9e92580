"""Optimizer-state bytes and step time of the baselines AdamW, SGD (momentum 0.9) and Adafactor on the
GaLore 60M Llama shape (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
arXiv:2403.03507, Table 2 shapes). Bytes are exact counts of ``optimizer.state``; step time is the median of
interleaved ``optimizer.step()`` calls on fixed gradients from one small batch. Ratios are against AdamW.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    llama_settings,
    llama_with_gradients,
    measure_optimizer_steps,
    parse_args,
    write_result,
)

import hf_effi  # noqa: E402
from hf_effi.utils.memory import optimizer_state_bytes  # noqa: E402

NAME = "optimizer_state"
CLAIM = (
    "Baseline optimizer-state memory and step time on the GaLore 60M Llama shape: AdamW vs SGD-momentum vs Adafactor."
)
OPTIMIZERS = ("adamw", "sgd", "adafactor")
LR = 1e-3


def model_config(smoke: bool):
    """The GaLore 60M Llama shape (``hf_effi.testing.shape_60m``), or a tiny Llama for smoke runs."""
    from transformers import LlamaConfig

    from hf_effi.testing import shape_60m

    if smoke:
        return LlamaConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=172, vocab_size=512
        )
    return shape_60m()


def build_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The one place optimizers are built: ``hf_effi.make_optimizer`` (torch.optim classes, no weight decay)."""
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    return hf_effi.make_optimizer(name, model, lr=LR, **kwargs)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    config = model_config(args.smoke)
    batch, seq = (1, 8) if args.smoke else (1, 64)
    repeats = 2 if args.smoke else 11
    model = llama_with_gradients(config, batch, seq)

    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    n_params = sum(p.numel() for p in params)
    optimizers = {name: build_optimizer(name, model) for name in OPTIMIZERS}
    state, timing, rows = measure_optimizer_steps(optimizers, n_params, repeats)
    from_state_dict = {name: optimizer_state_bytes(opt, from_state_dict=True) for name, opt in optimizers.items()}
    adamw_formula = 2 * param_bytes + 4 * len(params)
    if state["adamw"] != adamw_formula:
        raise RuntimeError(f"AdamW state {state['adamw']} B differs from 2*params + 4*n_tensors = {adamw_formula} B")

    payload = {
        "claim": CLAIM,
        "config": llama_settings(config, params, batch, seq, repeats) | {"lr": LR},
        "rows": rows,
        "notes": (
            f"State bytes are exact (unique storages in optimizer.state); AdamW matches 2 x parameter bytes + 4 B "
            f"step per tensor = {adamw_formula:,} B exactly. Parameters: {n_params:,} in {len(params)} tensors "
            f"({param_bytes:,} B). Step time: median of {repeats} interleaved optimizer.step() calls on fixed "
            f"gradients, after one warm-up step each; CPU time is the steadier figure on a shared machine. "
            "Optimizers built with hf_effi.make_optimizer (SGD momentum 0.9, weight decay 0)."
        ),
        "details": {
            "step_wall_samples_s": timing["samples"],
            "step_cpu_samples_s": timing["cpu_samples"],
            "state_dict_bytes": from_state_dict,
            "adamw_formula_bytes": adamw_formula,
        },
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
