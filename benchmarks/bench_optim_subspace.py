"""Optimizer-state bytes and step time of the subspace optimizers vs torch AdamW (foreach) on the GaLore 60M Llama
shape (``hf_effi.testing.shape_60m``; Zhao et al., arXiv 2403.03507, Table 2).

Measured in one run, same model, same gradients:

- state bytes per parameter, exact (``optimizer_state_bytes`` over ``optimizer.state``), for the projected
  matrices alone and for the whole model (embeddings, norms and LM head stay AdamW in every method);
- ``optimizer.step()`` time on fixed gradients, and the full training step (forward + backward + step), medians of
  interleaved repeats, as ratios to AdamW (foreach);
- the projection-refresh cost: all target matrices' refresh with the randomized range finder (GaLore's default) and
  with exact SVD, and what staggering makes of it per step (amortised over ``update_proj_gap``; the most matrices
  any one step refreshes).

Ranks are d/4 = 128 (GaLore, Fira, APOLLO, Grass), the papers' other defaults otherwise.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import interleaved, make_rows, parse_args, write_result  # noqa: E402

import hf_effi  # noqa: E402
import hf_effi.optim.subspace  # noqa: E402,F401  (registers the names)
from hf_effi.optim.subspace import exact_svd_basis, oriented, randomized_range_finder, refresh_offset  # noqa: E402
from hf_effi.utils.memory import optimizer_state_bytes  # noqa: E402

NAME = "optim_subspace"
CLAIM = "Subspace optimizers on the GaLore 60M Llama shape: state bytes/param and step time vs AdamW (foreach)."
LR = 1e-3
GAP = 200


def settings(rank: int) -> dict[str, dict]:
    return {
        "adamw": {"foreach": True},
        "galore_adamw": {"rank": rank},
        "fira_adamw": {"rank": rank},
        "apollo_adamw": {"rank": rank},
        "apollo_mini": {},
        "frugal": {},
        "gwt_adamw": {},
        "grass_adamw": {"rank": rank},
    }


def model_config(smoke: bool):
    from transformers import LlamaConfig

    from hf_effi.testing import shape_60m

    if smoke:
        return LlamaConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=172, vocab_size=512
        )
    return shape_60m()


def state_of(optimizer, params) -> int:
    """State bytes of ``params`` only (a view of ``optimizer.state`` restricted to them)."""
    view = type("StateView", (), {"state": {p: optimizer.state[p] for p in params if p in optimizer.state}})()
    return optimizer_state_bytes(view)


def refresh_costs(targets: dict[str, torch.Tensor], rank: int, repeats: int) -> dict[str, float]:
    """CPU seconds to refresh every target matrix once, randomized range finder vs exact SVD (median of repeats)."""
    out = {}
    for label, fn in (
        ("randomized", lambda g: randomized_range_finder(g, rank, generator=torch.Generator().manual_seed(0))),
        ("svd", lambda g: exact_svd_basis(g, rank)),
    ):
        samples = []
        for _ in range(repeats):
            start = time.process_time()
            for p in targets.values():
                fn(oriented(p.grad).float())
            samples.append(time.process_time() - start)
        out[label] = sorted(samples)[len(samples) // 2]
    return out


def main(
    argv: list[str] | None = None,
    *,
    name: str = NAME,
    load_model=None,
    label: str = "LlamaForCausalLM (shape_60m)",
    full_repeats_override: tuple[int, int] | None = None,
    claim: str = CLAIM,
) -> Path:
    """Measure on ``shape_60m``, or on ``load_model()`` (e.g. the real SmolLM2) outside smoke mode."""
    args = parse_args(__doc__.splitlines()[0], argv)
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    if load_model is not None and not args.smoke:
        model = load_model()
        model.train()
        config = model.config
    else:
        config = model_config(args.smoke)
        model = LlamaForCausalLM(config)
    rank = config.hidden_size // 4
    batch, seq = (1, 8) if args.smoke else (1, 128)
    repeats, full_repeats = (2, 1) if args.smoke else (full_repeats_override or (11, 5))
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()

    optimizers = {name: hf_effi.make_optimizer(name, model, lr=LR, **kw) for name, kw in settings(rank).items()}
    for opt in optimizers.values():
        opt.step()  # creates the state (and each projection: the first step refreshes every matrix)
    target_group = next(g for g in optimizers["galore_adamw"].param_groups if g["effi_role"] == "target")
    targets = dict(zip(target_group["param_names"], target_group["params"]))
    params = list(model.parameters())
    n_params, n_target = sum(p.numel() for p in params), sum(p.numel() for p in targets.values())

    whole = {name: optimizer_state_bytes(opt) / n_params for name, opt in optimizers.items()}
    projected = {name: state_of(opt, targets.values()) / n_target for name, opt in optimizers.items()}
    caches = {
        name: sum(t.numel() * t.element_size() for _, t in getattr(opt, "_caches", {}).values())
        for name, opt in optimizers.items()
    }
    step_timing = interleaved({name: opt.step for name, opt in optimizers.items()}, repeats=repeats, warmup=1)

    def full_step(opt):
        def run():
            opt.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()

        return run

    full_timing = interleaved(
        {name: full_step(opt) for name, opt in optimizers.items()}, repeats=full_repeats, warmup=1
    )
    model(input_ids=ids, labels=ids).loss.backward()  # fresh gradients for the refresh timing
    refresh = refresh_costs(targets, rank, repeats=1 if args.smoke else 3)
    per_step = Counter(refresh_offset(n, GAP) for n in targets)
    most_at_once = max(per_step.values())

    rows = make_rows("optimizer state per parameter, projected matrices", "bytes/param", projected, "adamw")
    rows += make_rows("optimizer state per parameter, whole model", "bytes/param", whole, "adamw")
    rows += make_rows("optimizer.step() CPU time, median", "s", step_timing["cpu_median"], "adamw")
    rows += make_rows("full training step (fwd+bwd+step) CPU time, median", "s", full_timing["cpu_median"], "adamw")
    rows += make_rows(
        "refresh of every target matrix once (CPU s)",
        "s",
        {"galore randomized range finder": refresh["randomized"], "galore exact SVD": refresh["svd"]},
        "galore exact SVD",
    )
    payload = {
        "claim": claim,
        "config": {
            "model": label if not args.smoke else "tiny Llama (smoke)",
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "parameters": n_params,
            "projected_parameters": n_target,
            "projected_matrices": len(targets),
            "rank": rank,
            "update_proj_gap": GAP,
            "batch": [batch, seq],
            "repeats": {"optimizer_step": repeats, "full_step": full_repeats},
            "settings": settings(rank),
        },
        "rows": rows,
        "notes": (
            f"{len(targets)} projected matrices ({n_target:,} of {n_params:,} parameters; the rest, mostly the two "
            f"embedding matrices, get AdamW in every method, which bounds the whole-model saving). State bytes are "
            f"exact. Random projections are stored as seeds; APOLLO keeps the regenerated matrix in a cache outside "
            f"the state ({', '.join(f'{k} {v:,} B' for k, v in caches.items() if v)}). Times are CPU seconds, medians "
            f"of interleaved repeats, 1 thread; the timed steps include the staggered refreshes that fall on them. "
            f"Refresh: every matrix once costs {refresh['randomized']:.3f} s (randomized range finder, 2 power "
            f"iterations) vs {refresh['svd']:.3f} s (exact SVD); staggered over T={GAP} steps that is "
            f"{refresh['randomized'] / GAP * 1e3:.2f} ms per step on average, and at most {most_at_once} of "
            f"{len(targets)} matrices refresh on the same step (without staggering all {len(targets)} refresh on "
            f"step 1, T+1, ...)."
        ),
        "details": {
            "step_cpu_samples_s": step_timing["cpu_samples"],
            "full_step_cpu_samples_s": full_timing["cpu_samples"],
            "full_step_wall_median_s": full_timing["median"],
            "refresh_all_matrices_cpu_s": refresh,
            "refresh_per_step_amortised_s": refresh["randomized"] / GAP,
            "max_matrices_refreshing_on_one_step": most_at_once,
            "regenerable_cache_bytes": caches,
        },
    }
    return write_result(name, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
