"""Launching 2-process CPU workers from pytest: a free port, a 1-thread env, a hard timeout, a JSON result.

Each test module launches its worker once (a module-scoped fixture) and its tests read the worker's JSON, so
a family of cases costs one launch (~10-15 s on 2 cores) instead of one per case.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKERS = Path(__file__).parent / "workers"
LAUNCH_TIMEOUT_S = 240


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it), for the rendezvous of one launch."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


def accelerate_ddp_command(port: int) -> list[str]:
    """The flags that really give 2 CPU processes (``--cpu`` would silently start one)."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(port)),
    ]


LAUNCHERS = {"torchrun": torchrun_command, "accelerate": accelerate_ddp_command}


def run_worker(launcher: str, script: str, out_dir: Path, timeout: float = LAUNCH_TIMEOUT_S) -> dict:
    """Run ``<launcher> workers/<script> <out_dir>/result.json <out_dir>`` on 2 processes; return the JSON rank 0
    wrote. ``launcher`` is ``"torchrun"`` or ``"accelerate"``; the port is chosen now.

    The launch runs in its own process group so a timeout kills the workers too, not just the launcher.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    result_path = out_dir / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [*LAUNCHERS[launcher](free_port()), str(WORKERS / script), str(result_path), str(out_dir)]
    proc = subprocess.Popen(
        cmd, cwd=WORKERS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{script} did not finish within {timeout:.0f} s; last output:\n{output[-4000:]}")
    if proc.returncode != 0 or not result_path.exists():
        pytest.fail(
            f"{script} exited with {proc.returncode} (result written: {result_path.exists()}):\n{output[-6000:]}"
        )
    return json.loads(result_path.read_text())


@pytest.fixture(scope="session")
def launch_two_processes():
    """``launch(launcher, script, out_dir) -> dict``: see :func:`run_worker`."""
    return run_worker
