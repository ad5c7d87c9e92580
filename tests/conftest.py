"""Test-wide hygiene: a fixed thread count, so timings and float reductions do not depend on the machine."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("HF_EFFI_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
