"""Subspace optimizers under DDP (2 CPU processes, gloo, accelerate launch): the seeded projections agree across
ranks, so the replicas stay identical (worker: ``workers/subspace_ddp.py``)."""

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def ddp(launch_two_processes, tmp_path_factory):
    return launch_two_processes("accelerate", "subspace_ddp.py", tmp_path_factory.mktemp("subspace_ddp"))


@pytest.mark.parametrize("name,cls", [("galore_adamw", "GaLoreAdamW"), ("apollo_mini", "ApolloAdamW")])
def test_replicas_and_optimizer_state_are_identical(ddp, name, cls):
    run = ddp[name]
    assert run["world_size"] == 2 and run["wrapped"] == "DistributedDataParallel"
    assert run["optimizer"] == cls
    assert run["moved"] > 1e-3, "training barely moved the parameters: the comparison says nothing"
    assert run["identical"], f"{name}: parameters differ between ranks"
    rank0, rank1 = run["fingerprints"]
    assert rank0 == rank1, f"{name}: optimizer state (projections, seeds, moments) differs between ranks"
    assert any("refreshes" in str(entry) for entry in rank0)
