"""ZOTrainer under DDP: 2 CPU processes (gloo), one accelerate launch; the worker writes one JSON."""

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS, GA = 3, 2  # as in the worker


@pytest.fixture(scope="module")
def run(launch_two_processes, tmp_path_factory):
    return launch_two_processes("accelerate", "zo_ddp.py", tmp_path_factory.mktemp("zo_ddp"))


def test_launch_gave_two_ddp_processes(run):
    assert run["world_size"] == 2 and run["multi_cpu"] and run["ddp"], run


def test_zo_replicas_are_identical_and_allocate_no_grad(run):
    assert run["identical"], "parameters differ between ranks"
    assert run["grads"] == 0
    assert run["samples_drawn"] == STEPS * GA


def test_zo_update_uses_the_rank_averaged_scalar(run):
    assert run["ranks_saw_different_data"], "both ranks trained on the same micro-batches: data was not sharded"
    assert run["moved"] > 1e-3
    # The replay repeats the same float32 forwards in one process; what is left is rounding: a few ulps of weights of
    # size ~1 (norm weights, ulp 1.2e-7), measured 3.6e-7. Not reducing the scalar moves the weights by ~0.1.
    assert run["max_abs_diff_vs_replay"] <= 1e-6, run
    # and not reducing (rank 0's scalar alone) would be visibly different
    assert run["diff_if_not_reduced"] > 1e4 * max(run["max_abs_diff_vs_replay"], 1e-7), run
