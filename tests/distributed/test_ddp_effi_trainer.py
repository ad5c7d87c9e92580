"""EffiTrainer and Trainer's optimizer-factory protocol under DDP: 2 CPU processes, gloo, one accelerate launch.

The worker (``workers/ddp_effi_trainer.py``) runs every case and writes one JSON; these tests read it.
"""

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# AdamW divides each coordinate's step by sqrt(v), so float32 rounding differences in a gradient (relative ~1e-7)
# reach the parameters amplified where gradients are tiny. The worker measures that floor in one process (the same
# window summed in two orders): 1.5e-7 at lr 1e-2 after 4 steps. 1e-6 is ~7x that floor and 1/30,000 of how far
# the parameters move (0.03), so a wrong data split, loss scale or schedule (a step-size error) cannot hide in it.
ADAMW_ATOL = 1e-6
STEPS, GA = 4, 2  # as in the worker


@pytest.fixture(scope="module")
def ddp(launch_two_processes, tmp_path_factory):
    return launch_two_processes("accelerate", "ddp_effi_trainer.py", tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("case", ["effi_trainer", "factory"])
def test_launch_gave_two_ddp_processes(ddp, case):
    run = ddp[case]
    assert run["world_size"] == 2 and run["num_processes"] == 2
    assert run["distributed_type"] == "DistributedType.MULTI_CPU"
    assert run["backend"] == "gloo"
    assert run["wrapped"] == "DistributedDataParallel"


def test_effi_trainer_replicas_are_identical(ddp):
    run = ddp["effi_trainer"]
    assert run["optimizer"] == "AdamW" and run["scheduler"] == "ProfileScheduler"
    assert run["identical"], f"parameters differ between ranks, checksums {run['checksums']}"
    assert run["checksums"][0] == run["checksums"][1]


def test_effi_trainer_equals_one_process_on_the_global_batch(ddp):
    run = ddp["effi_trainer"]
    assert run["micro_batches_per_rank"] == STEPS * GA
    assert run["ranks_saw_different_data"], "both ranks trained on the same micro-batches: data was not sharded"
    assert run["lrs"] == run["reference_lrs"], "EffiTrainer's WSD schedule differs from hf_effi.make's"
    assert run["noise_floor"] <= ADAMW_ATOL, f"float32 noise floor {run['noise_floor']:.2e} exceeds the tolerance"
    assert run["max_abs_diff_vs_single_process"] <= ADAMW_ATOL, run
    assert run["moved"] > 1000 * ADAMW_ATOL, "training barely moved the parameters: the comparison says nothing"


def test_optimizer_factory_protocol_builds_hf_effi_groups(ddp):
    run = ddp["factory"]
    assert run["optimizer"] == "AdamW"
    assert run["roles"] == ["decay", "no_decay"], "the factory did not build hf_effi's param groups"
    assert run["weight_decays"] == [0.1, 0.0]
    assert run["identical"], f"parameters differ between ranks, checksums {run['checksums']}"


def test_layerwise_optimizer_is_refused_with_two_processes(ddp):
    for rank, run in enumerate(ddp["layerwise"]):
        assert run["effi_optim_args"] == {"layerwise": True}
        assert run["phase"] == "construct", f"rank {rank}: refused only at {run['phase']!r}, not by EffiTrainer()"
        assert run["error_type"] == "ValueError", run
        assert run["raised_from"].startswith("hf_effi."), f"not hf_effi's refusal: {run}"
        message = run["error"]
        assert "world_size=2" in message or "2 processes" in message, message
        assert "layerwise=False" in message, message
