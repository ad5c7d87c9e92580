"""AdaLomo vs AdamW: peak memory of a training step and optimizer-state bytes on SmolLM2-135M-Instruct.

AdaLomo (Lv et al., "AdaLomo: Low-memory Optimization with Adaptive Learning Rate", arXiv 2310.10195) updates each
parameter inside backward and frees its gradient at once (no full gradient), and keeps only a factored fp32 second
moment (a row and a column vector per matrix) instead of AdamW's two full moments. Measured here: the peak memory of
one full training step (forward, backward, optimizer) above what is live before it (weights and the optimizer state,
allocated by an earlier step), the optimizer-state bytes per parameter, and the step time. ``--smoke`` uses a tiny
Llama instead of the real checkpoint.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import interleaved, make_rows, parse_args, write_result  # noqa: E402

import hf_effi  # noqa: E402
import hf_effi.optim.lomo  # noqa: E402,F401  (registers adalomo)
from hf_effi.utils.memory import optimizer_state_bytes, peak_memory  # noqa: E402

NAME = "adalomo_memory"
CLAIM = "AdaLomo (fused into backward, factored second moment) needs at most half of AdamW's training-step peak memory."
VARIANTS = ("adamw", "adalomo")


def _load(smoke: bool):
    if smoke:
        from hf_effi.testing import tiny_model

        return tiny_model("llama", vocab_size=512), "tiny llama (hidden 64, 2 layers)"
    from hf_effi.testing import SMOLLM2_NAME, load_smollm2

    model, _ = load_smollm2()
    return model, SMOLLM2_NAME


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    batch, seq = (1, 8) if args.smoke else (1, 32)
    repeats = 2 if args.smoke else 3
    models, optimizers, model_name = {}, {}, None
    for v in VARIANTS:
        models[v], model_name = _load(args.smoke)
        models[v].train()
        # foreach=False: AdamW's per-tensor kernel, no multi-tensor temporaries (its lowest-memory setting).
        kw = {"foreach": False} if v == "adamw" else {}
        optimizers[v] = hf_effi.make_optimizer(v, models[v], lr=1e-5 if v == "adamw" else 1e-3, **kw)
    config = models["adamw"].config
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}

    def train_step(variant: str) -> None:
        model, opt = models[variant], optimizers[variant]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses[variant].append(loss.item())

    for v in VARIANTS:
        train_step(v)  # allocates the optimizer state, so the peak below is a steady-state step
    gc.collect()
    state = {v: optimizer_state_bytes(optimizers[v]) for v in VARIANTS}
    n_params = sum(p.numel() for p in models["adamw"].parameters())
    peaks = {v: peak_memory(train_step, v, modules=[models[v]], optimizers=[optimizers[v]]) for v in VARIANTS}
    timing = interleaved({v: (lambda v=v: train_step(v)) for v in VARIANTS}, repeats=repeats, warmup=0)
    if not all(torch.isfinite(torch.tensor(values)).all() for values in losses.values()):
        raise RuntimeError(f"a training loss is not finite: {losses}")

    rows = make_rows("training-step peak above start", "bytes", {v: r.peak_bytes for v, r in peaks.items()}, "adamw")
    rows += make_rows(
        "training-step peak + optimizer state",
        "bytes",
        {v: peaks[v].peak_bytes + state[v] for v in VARIANTS},
        "adamw",
    )
    rows += make_rows("optimizer state", "bytes", state, "adamw")
    rows += make_rows(
        "optimizer state per parameter", "bytes/param", {v: s / n_params for v, s in state.items()}, "adamw"
    )
    rows += make_rows("training step CPU time, median", "s", timing["cpu_median"], "adamw")
    payload = {
        "claim": CLAIM,
        "config": {
            "model": model_name,
            "parameters": n_params,
            "dtype": "float32",
            "batch": [batch, seq],
            "repeats": repeats,
            "adamw": {"lr": 1e-5, "foreach": False},
            "adalomo": {"lr": 1e-3, "eps": [1e-30, 1e-3], "clip_threshold": 1.0, "decay_rate": -0.8},
        },
        "rows": rows,
        "notes": (
            "Peak: torch MemTracker over one forward+backward+step, minus what was live before it (weights and the "
            "optimizer state, allocated by a first step), so AdamW's peak holds its full gradient and AdaLomo's at "
            "most one parameter's gradient plus the update temporaries. The second row adds the resident optimizer "
            "state (AdamW 8 bytes/param; AdaLomo a row and a column fp32 vector per matrix). Step time: median of "
            f"{repeats} interleaved steps, CPU time (steadier than wall time on a shared machine)."
        ),
        "details": {
            "breakdown_at_peak": {v: r.breakdown for v, r in peaks.items()},
            "losses": losses,
            "step_cpu_samples_s": timing["cpu_samples"],
        },
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
