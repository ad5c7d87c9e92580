"""Optimizer-state bytes per parameter and step time of CAME, SPAM, LAMB and LARS vs AdamW on the GaLore 60M Llama
shape (Zhao et al., arXiv:2403.03507, Table 2 shapes). Bytes are exact counts of ``optimizer.state`` after one step;
step time is the median of interleaved ``optimizer.step()`` calls on fixed gradients from one small batch.

CAME: Luo et al., arXiv 2307.02047. SPAM: Huang et al., arXiv 2501.06842 (dense, and sparse momentum at density
0.25). LAMB: You et al., arXiv 1904.00962. LARS: You et al., arXiv 1708.03888. Ratios are against AdamW.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    llama_settings,
    llama_with_gradients,
    measure_optimizer_steps,
    parse_args,
    write_result,
)

import hf_effi  # noqa: E402

NAME = "optim_more"
CLAIM = (
    "CAME, SPAM, LAMB and LARS on the GaLore 60M Llama shape: optimizer-state bytes per parameter and "
    "optimizer.step() time, as ratios to AdamW."
)
# variant -> (registered name, kwargs)
VARIANTS = {
    "adamw": ("adamw", {}),
    "came": ("came", {}),
    "spam": ("spam", {}),
    "spam_density0.25": ("spam", {"density": 0.25}),
    "lamb": ("lamb", {}),
    "lars": ("lars", {}),
}
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


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    config = model_config(args.smoke)
    batch, seq = (1, 8) if args.smoke else (1, 64)
    repeats = 2 if args.smoke else 7
    model = llama_with_gradients(config, batch, seq)

    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    optimizers = {v: hf_effi.make_optimizer(name, model, lr=LR, **kw) for v, (name, kw) in VARIANTS.items()}
    # Each optimizer steps the same parameters; steps move them by ~lr, which does not change the work done.
    _, timing, rows = measure_optimizer_steps(optimizers, n_params, repeats)
    payload = {
        "claim": CLAIM,
        "config": llama_settings(config, params, batch, seq, repeats)
        | {"lr": LR, "variants": {v: {"optimizer": name, **kw} for v, (name, kw) in VARIANTS.items()}},
        "rows": rows,
        "notes": (
            f"State bytes are exact (unique storages in optimizer.state after one step). Parameters: {n_params:,} in "
            f"{len(params)} tensors. Step time: median of {repeats} interleaved optimizer.step() calls on fixed "
            "gradients after one warm-up step each; CPU time is the steadier figure on a shared machine. AdamW is "
            "torch's (foreach kernel); CAME, SPAM, LAMB and LARS are hf_effi's plain per-tensor loops (no foreach or "
            "fused kernel), so their step-time ratios include that difference. SPAM at density 0.25 keeps moments for "
            "a quarter of each matrix's entries plus a 1-byte mask per entry; vectors stay dense. Optimizers built with "
            "hf_effi.make_optimizer, weight decay 0, default hyperparameters."
        ),
        "details": {"step_wall_samples_s": timing["samples"], "step_cpu_samples_s": timing["cpu_samples"]},
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
