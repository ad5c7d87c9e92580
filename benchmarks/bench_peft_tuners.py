"""PEFT tuners vs LoRA at an equal trainable-parameter budget: held-out loss, trainable parameters, optimizer state
and step time when fine-tuning SmolLM2-135M-Instruct on the Python documentation corpus.

Every method adapts the same top ``ADAPTED_LAYERS`` of the 30 decoder layers (``layers_to_transform``). The frozen
layers below them are identical for every method and seed, so their output on the training and held-out rows is
computed once and reused; only the adapted layers, the final norm and the LM head run in each step. This is exact
(checked against the full model's logits at the start) and makes 7 methods x 3 seeds affordable on a CPU.

Budget: LoRA r=8 on q_proj, v_proj. Each tuner is sized to come as close as it allows (actual counts reported):
SoRA r=8 (+ r gate entries), SLTrain r=4 with density chosen to fill the rest, S²FT FFN channels of down_proj
(one attention head of o_proj alone would be 2.4x the budget), MoRA r=8 (its square matrix is sized to LoRA's count),
PMSS r=88 (an r x r core per matrix), SVFit on every Linear with r=192 (it trains at most min(d_out, d_in) singular
values per matrix, so it stays far below the budget). Seeds change the adapter initialisation and the row order.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import make_rows, mean_sd, parse_args, write_result  # noqa: E402

import hf_effi  # noqa: E402, F401  (registers the tuners)
import hf_effi.peft as effi_peft  # noqa: E402
from hf_effi.peft.s2ft import S2FTConfig  # noqa: E402
from hf_effi.peft.sltrain import SLTrainConfig  # noqa: E402
from hf_effi.peft.sora import SoRAConfig, sora_proximal_step  # noqa: E402
from hf_effi.utils.memory import optimizer_state_bytes  # noqa: E402

NAME = "peft_tuners"
CLAIM = ("hf_effi's PEFT tuners fine-tune SmolLM2-135M-Instruct at LoRA's trainable-parameter budget: held-out loss, "
         "parameters, optimizer state and step time vs LoRA.")
ADAPTED_LAYERS = 4
QV = ["q_proj", "v_proj"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _variants(n_layers: int, hidden: int, kv_out: int, intermediate: int, smoke: bool) -> dict:
    """name -> zero-argument config factory (None when the tuner is not installed), all on the same layers."""
    from peft import LoraConfig

    layers = list(range(n_layers - ADAPTED_LAYERS, n_layers)) if not smoke else [n_layers - 1]
    common = dict(layers_to_transform=layers, layers_pattern="layers", task_type="CAUSAL_LM")
    lora_r = 8 if not smoke else 2
    per_layer = lora_r * (2 * hidden + hidden + kv_out)  # LoRA on q (h x h) and v (kv_out x h)
    sl_r = max(1, lora_r // 2)
    density = (per_layer - sl_r * (3 * hidden + kv_out)) / (hidden * hidden + kv_out * hidden)
    channels = max(1, round(per_layer / hidden))
    svfit_r = min(kv_out, 192)
    pmss_r = 88 if not smoke else 4

    def optional(name, **kwargs):
        cls = getattr(effi_peft, name, None)
        return None if cls is None else (lambda: cls(**kwargs, **common))

    return {
        "lora": lambda: LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=QV, lora_dropout=0.0, **common),
        "mora": optional("MoRAConfig", r=lora_r, target_modules=QV),
        "sora": lambda: SoRAConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=QV, **common),
        "pmss": optional("PMSSConfig", r=pmss_r, target_modules=QV),
        "svfit": optional("SVFitConfig", r=svfit_r, target_modules=ALL_LINEAR),
        "sltrain": lambda: SLTrainConfig(r=sl_r, lora_alpha=2 * sl_r, density=density, target_modules=QV,
                                                   **common),
        "s2ft": lambda: S2FTConfig(channel_ratio=channels / intermediate, target_modules=["down_proj"],
                                             **common),
    }


def _top_forward(model, hidden: torch.Tensor, first: int) -> torch.Tensor:
    """Logits [B, T, V] from the input ``hidden`` [B, T, H] of decoder layer ``first`` (causal, no padding)."""
    inner = model.model
    pos = torch.arange(hidden.shape[1]).unsqueeze(0)
    position_embeddings = inner.rotary_emb(hidden, pos)
    for layer in inner.layers[first:]:
        hidden = layer(hidden, attention_mask=None, position_ids=pos, position_embeddings=position_embeddings)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return model.lm_head(inner.norm(hidden))


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def _load(smoke: bool):
    if smoke:
        from hf_effi.testing import tiny_model

        model = tiny_model("llama", attn_implementation="sdpa").eval()
        gen = torch.Generator().manual_seed(0)
        return model, torch.randint(0, 256, (8, 32), generator=gen), torch.randint(0, 256, (4, 32), generator=gen)
    from hf_effi.data import chunk_token_stream, corpus_token_stream
    from hf_effi.testing import load_smollm2

    model, tokenizer = load_smollm2()
    train = chunk_token_stream(corpus_token_stream("python_docs", "train", tokenizer, shuffle_seed=0), 128,
                               max_tokens=128 * 24)
    held_out = chunk_token_stream(corpus_token_stream("python_docs", "eval", tokenizer), 128, max_tokens=128 * 8)
    return model, torch.tensor(train["input_ids"]), torch.tensor(held_out["input_ids"])


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    from peft import get_peft_model

    steps, batch, seeds, lr = (2, 2, [0], 1e-3) if args.smoke else (12, 2, [0, 1, 2], 3e-3)
    model, train_ids, eval_ids = _load(args.smoke)
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    first = n_layers - (1 if args.smoke else ADAPTED_LAYERS)
    with torch.no_grad():  # the frozen bottom layers' output, shared by every method and seed
        train_h = model(train_ids, output_hidden_states=True).hidden_states[first]
        full = model(eval_ids, output_hidden_states=True)
        eval_h = full.hidden_states[first]
        base_logits = _top_forward(model, eval_h, first)
        exact = (base_logits - full.logits).abs().max().item()
        base_loss = _loss(base_logits, eval_ids).item()
    if exact > 1e-3:
        raise RuntimeError(f"the cached partial forward differs from the full model by {exact}")
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    kv_out = cfg.num_key_value_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    variants = _variants(n_layers, cfg.hidden_size, kv_out, cfg.intermediate_size, args.smoke)
    skipped = [name for name, make in variants.items() if make is None]
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for name, make in variants.items():
        if make is None:
            continue
        losses, wall, cpu = [], [], []
        for seed in seeds:
            model.load_state_dict(pristine)
            torch.manual_seed(seed)
            try:
                peft_model = get_peft_model(model, make())
            except Exception as error:  # a tuner that cannot be built here is reported, not silently dropped
                failed[name] = f"{type(error).__name__}: {error}"
                break
            params = [p for p in peft_model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            order = torch.randperm(train_ids.shape[0], generator=torch.Generator().manual_seed(seed))
            base = peft_model.get_base_model()
            for step in range(steps):
                rows = order[(step * batch) % len(order):][:batch]
                t0, c0 = time.perf_counter(), time.process_time()
                _loss(_top_forward(base, train_h[rows], first), train_ids[rows]).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if name == "sora":
                    sora_proximal_step(peft_model, 3e-4)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            with torch.no_grad():
                losses.append(_loss(_top_forward(base, eval_h, first), eval_ids).item())
            results.setdefault(name, {})["trainable"] = sum(p.numel() for p in params)
            results[name]["state"] = optimizer_state_bytes(opt)
            model = peft_model.unload()  # back to the plain model for the next run
            if hasattr(model, "peft_config"):
                del model.peft_config
        if name in failed:
            continue
        mean, sd = mean_sd(losses)
        results[name].update(loss=mean, loss_sd=sd, losses=losses, wall=statistics.median(wall),
                             cpu=statistics.median(cpu))
        print(f"{name}: loss {mean:.4f} ± {sd:.4f}, trainable {results[name]['trainable']}", flush=True)
    names = list(results)
    rows = make_rows("held-out loss after training, mean over seeds", "nats",
                     {n: results[n]["loss"] for n in names}, "lora", sds={n: results[n]["loss_sd"] for n in names})
    rows += make_rows("trainable parameters", "count", {n: results[n]["trainable"] for n in names}, "lora")
    rows += make_rows("optimizer state (AdamW)", "bytes", {n: results[n]["state"] for n in names}, "lora")
    rows += make_rows("training step CPU time, median", "s", {n: results[n]["cpu"] for n in names}, "lora")
    rows += make_rows("training step wall time, median", "s", {n: results[n]["wall"] for n in names}, "lora")
    payload = {
        "claim": CLAIM,
        "config": {"model": "tiny random Llama" if args.smoke else "SmolLM2-135M-Instruct",
                   "corpus": "random tokens" if args.smoke else "python_docs (train rows; held-out split for eval)",
                   "adapted_layers": n_layers - first, "steps": steps, "batch": [batch, int(train_ids.shape[1])],
                   "train_rows": int(train_ids.shape[0]), "eval_rows": int(eval_ids.shape[0]), "seeds": seeds,
                   "optimizer": f"AdamW lr={lr}, no weight decay", "sora_xi": 3e-4},
        "rows": rows,
        "notes": (f"Held-out loss of the untrained model: {base_loss:.4f} nats. Every method adapts the same top "
                  f"{n_layers - first} decoder layers; the frozen layers below run once (checked exact to "
                  f"{exact:.1e}). Very short runs ({steps} steps): the loss differences say how fast each method "
                  f"moves at this budget, not its final quality. Step times were taken on a machine shared with "
                  f"other jobs (CPU time is the steadier figure). Not installed, so not measured: {skipped or 'none'}. Failed to build: {failed or 'none'}."),
        "details": {"base_held_out_loss": base_loss, "per_seed_loss": {n: results[n]["losses"] for n in names},
                    "partial_forward_max_abs_error": exact, "skipped": skipped, "failed": failed},
    }
    return write_result(NAME, payload, args.out, smoke=args.smoke)


if __name__ == "__main__":
    print(main())
