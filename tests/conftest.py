"""Test-wide hygiene: a fixed thread count, so timings and float reductions do not depend on the machine."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in the interpreter; must precede their import

torch.set_num_threads(int(os.environ.get("HF_EFFI_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
