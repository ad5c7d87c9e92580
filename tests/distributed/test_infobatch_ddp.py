"""InfoBatchTrainer under DDP (2 CPU processes, gloo): one global pruned order split across the processes, so every
kept sample is trained on by exactly one process per epoch; identical scores and replicas; step count = schedule."""

import math

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def ddp(launch_two_processes, tmp_path_factory):
    return launch_two_processes("accelerate", "infobatch_ddp.py", tmp_path_factory.mktemp("infobatch_ddp"))["ranks"]


def test_two_processes_ran(ddp):
    assert [r["world_size"] for r in ddp] == [2, 2]
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ddp)


def test_each_kept_sample_goes_to_exactly_one_process_per_epoch(ddp):
    history = ddp[0]["history"]
    assert [h["samples"] for h in history] == [32, 24, 24, 32]
    for epoch, planned in enumerate(h["samples"] for h in history):
        a, b = ddp[0]["seen"][str(epoch)], ddp[1]["seen"][str(epoch)]
        assert len(a) == len(b) == planned // 2, f"epoch {epoch}: ranks saw {len(a)} and {len(b)} rows"
        assert not set(a) & set(b), f"epoch {epoch}: a sample went to both processes"
        assert len(set(a) | set(b)) == planned, f"epoch {epoch}: a sample was repeated or lost"
    assert ddp[0]["samples_trained"] + ddp[1]["samples_trained"] == 112


def test_scores_plans_and_replicas_agree_across_processes(ddp):
    assert ddp[0]["history"] == ddp[1]["history"]
    assert ddp[0]["scores"] == ddp[1]["scores"]
    assert not any(math.isnan(s) for s in ddp[0]["scores"]), "a sample's loss never reached the score table"
    assert ddp[0]["checksum"] == ddp[1]["checksum"]


def test_step_count_is_the_scheduler_total(ddp):
    for r in ddp:
        assert r["global_step"] == r["max_steps"] == r["scheduler_steps"] == 14
        assert r["final_lr"] == pytest.approx(0.0, abs=1e-12)
