"""FSDP2 worker: hf_effi optimizers on ``fully_shard``-ed parameters (DTensor ``Shard(0)``) vs one process.

Run as ``torchrun --nproc_per_node 2 --master_port <port> fsdp2_optimizers.py <out.json> <scratch dir>``.

For each optimizer: shard a tiny Llama (each decoder layer, then the model) over a 2-rank gloo CPU mesh, build the
optimizer with ``hf_effi.make_optimizer`` on the sharded model, and take STEPS steps in which each rank feeds its
own micro-batch. FSDP2 averages gradients over ranks, so this equals one process stepping on the two micro-batches
concatenated (mean loss over equally many tokens). Rank 0 runs that single-process reference from the same initial
weights and reports the largest absolute difference from the gathered (``full_tensor``) parameters, plus the float32
noise floor (the same reference with the two micro-batch gradients accumulated instead of concatenated). Each rank
also saves its optimizer ``state_dict()`` with ``torch.save`` and reloads it with ``torch.load(weights_only=True)``,
what Trainer does on resume.

An optimizer that cannot run on shards is recorded, not fatal: ``outcome`` says whether ``make_optimizer`` refused
it, its ``step()`` raised, or it ran.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from dist_common import check_world, gather_objects, random_ids, tiny_llama, write_results
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard

import hf_effi

STEPS = 3
ROWS_PER_RANK = 2
LR = 1e-2
WEIGHT_DECAY = 0.1
CASES = [  # (name, make_optimizer kwargs)
    ("adamw", {}),
    ("sgd", {"momentum": 0.9}),
    ("adafactor", {}),
]


def micro_batch(step: int, rank: int) -> torch.Tensor:
    return random_ids(ROWS_PER_RANK, seed=1000 * step + rank)


def lm_step(model, optimizer, ids: torch.Tensor) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def sharded_model(mesh):
    """The tiny Llama with each decoder layer and then the whole model under ``fully_shard``, plus its initial
    (unsharded) weights for the reference."""
    model = tiny_llama(seed=0)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, initial


def optimizer_frame(error: Exception) -> str:
    """``file:line code`` of the innermost frame inside ``torch/optim`` (where an optimizer's math broke)."""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        path = Path(frame.filename)
        if path.parent.name == "optim" and path.parent.parent.name == "torch":
            return f"torch/optim/{path.name}:{frame.lineno} {frame.line}"
    return "outside torch.optim"


def one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"[:400]


def reference_run(name: str, kwargs: dict, initial: dict, *, accumulate: bool) -> dict:
    """One process from the same weights: the ranks' micro-batches concatenated (``accumulate=False``), or
    averaged as gradients of each micro-batch (``accumulate=True``, the same sum in another rounding order: the
    difference between the two is the float32 noise floor the sharded run is judged against)."""
    model = tiny_llama(seed=0)
    model.load_state_dict(initial)
    optimizer = hf_effi.make_optimizer(name, model, lr=LR, weight_decay=WEIGHT_DECAY, **kwargs)
    world = dist.get_world_size()
    for step in range(STEPS):
        batches = [micro_batch(step, r) for r in range(world)]
        if accumulate:
            for ids in batches:
                (model(input_ids=ids, labels=ids).loss / world).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            lm_step(model, optimizer, torch.cat(batches))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def state_tensors(state_dict: dict):
    for per_param in state_dict["state"].values():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                yield key, value


def state_round_trip(optimizer, path: str) -> dict:
    """Save this rank's sharded optimizer state, reload it with weights_only=True, compare, and load it back."""
    saved = optimizer.state_dict()
    kinds = sorted({f"{k}:{'DTensor' if isinstance(v, DTensor) else 'Tensor'}" for k, v in state_tensors(saved)})
    torch.save(saved, path)
    try:
        loaded = torch.load(path, weights_only=True)
    except Exception as e:  # the finding to report, not a crash of the worker
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:600], "state_kinds": kinds}
    same = True
    for (k1, a), (k2, b) in zip(state_tensors(saved), state_tensors(loaded), strict=True):
        if k1 != k2 or type(a) is not type(b):
            same = False
        elif isinstance(a, DTensor):
            same &= a.placements == b.placements and torch.equal(a.to_local(), b.to_local())
        else:
            same &= torch.equal(a, b)
    optimizer.load_state_dict(loaded)
    return {"ok": bool(same), "error": None, "state_kinds": kinds}


def compare_with_reference(name: str, kwargs: dict, full: dict, initial: dict) -> dict:
    ref = reference_run(name, kwargs, initial, accumulate=False)
    accumulated = reference_run(name, kwargs, initial, accumulate=True)
    diffs = {n: (full[n] - ref[n]).abs().max().item() for n in ref}
    worst = max(diffs, key=diffs.get)
    return {
        "max_abs_diff": diffs[worst],
        "worst_param": worst,
        # Matrices FSDP2 cut along dim 0 vs 1-D parameters (norm weights), split for the report.
        "max_abs_diff_2d": max(d for n, d in diffs.items() if ref[n].ndim == 2),
        "max_abs_diff_1d": max((d for n, d in diffs.items() if ref[n].ndim == 1), default=0.0),
        "noise_floor": max((accumulated[n] - ref[n]).abs().max().item() for n in ref),
        "max_abs_diff_vs_accumulated": max((full[n] - accumulated[n]).abs().max().item() for n in ref),
        "moved": max((ref[n] - initial[n]).abs().max().item() for n in ref),
    }


def run_case(name: str, kwargs: dict, mesh, rank: int, scratch: str) -> dict:
    """``outcome``: ``refused`` (make_optimizer raised), ``step_failed`` (optimizer.step raised) or ``ran``."""
    model, initial = sharded_model(mesh)
    result: dict = {
        "all_params_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "placements": sorted({str(p.placements) for p in model.parameters() if isinstance(p, DTensor)}),
        "local_numel": sum(p.to_local().numel() for p in model.parameters()),
        "full_numel": sum(t.numel() for t in initial.values()),
    }
    try:
        optimizer = hf_effi.make_optimizer(name, model, lr=LR, weight_decay=WEIGHT_DECAY, **kwargs)
    except Exception as e:
        result.update(outcome="refused", message=one_line(e))
    else:
        result["optimizer_class"] = type(optimizer).__name__
        try:
            for step in range(STEPS):
                lm_step(model, optimizer, micro_batch(step, rank))
        except Exception as e:
            result.update(outcome="step_failed", message=one_line(e), raised_in=optimizer_frame(e))
        else:
            result.update(outcome="ran", message=None)
    result["outcomes_by_rank"] = gather_objects(result["outcome"])
    if result["outcome"] != "ran":
        return result
    full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}  # collective: every rank
    result["round_trip"] = gather_objects(state_round_trip(optimizer, os.path.join(scratch, f"{name}_{rank}.pt")))
    if rank == 0:
        result.update(compare_with_reference(name, kwargs, full, initial))
    return result


def main(out_path: str, scratch: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    check_world(world, "torchrun FSDP2 worker")
    if dist.get_backend() != "gloo":
        raise SystemExit(f"expected the gloo backend, got {dist.get_backend()}")
    mesh = init_device_mesh("cpu", (world,))
    assert micro_batch(0, 0).ne(micro_batch(0, 1)).any(), "ranks must feed different micro-batches"
    results = {"world_size": world, "backend": dist.get_backend(), "cases": {}}
    for name, kwargs in CASES:
        results["cases"][name] = run_case(name, kwargs, mesh, rank, scratch)
    results["placement_is_shard0"] = all(c["placements"] == [str((Shard(0),))] for c in results["cases"].values())
    write_results(out_path, results)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
