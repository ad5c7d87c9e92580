"""Exact, deterministic memory accounting: optimizer state, bytes saved for backward, CPU peak."""

import pytest
import torch
from torch import nn

from hf_effi.testing import tiny_model
from hf_effi.utils.memory import (
    MemoryReport,
    format_bytes,
    optimizer_state_bytes,
    peak_memory,
    saved_activation_bytes,
)


def _tiny_llama():
    return tiny_model("llama", vocab_size=128)


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _one_step(model, optimizer, ids):
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_adamw_state_is_two_moments_plus_fp32_step(dtype):
    model = _tiny_llama().to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _one_step(model, optimizer, torch.randint(0, 128, (2, 8)))
    n_tensors = len(list(model.parameters()))
    expected = 2 * _param_bytes(model) + 4 * n_tensors
    assert optimizer_state_bytes(optimizer) == expected
    assert optimizer_state_bytes(optimizer, from_state_dict=True) == expected


def test_sgd_state_without_and_with_momentum():
    model = _tiny_llama()
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    momentum = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ids = torch.randint(0, 128, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    plain.step()
    momentum.step()
    assert optimizer_state_bytes(plain) == 0
    assert optimizer_state_bytes(momentum) == _param_bytes(model)


def test_state_of_fake_tensors_counts_without_allocating():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = nn.Linear(300, 200)
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.randn(4, 300)).sum().backward()
        optimizer.step()
    assert optimizer_state_bytes(optimizer) == 2 * (300 * 200 + 200) * 4 + 2 * 4


def test_state_before_any_step_is_zero():
    model = nn.Linear(4, 3)
    assert optimizer_state_bytes(torch.optim.AdamW(model.parameters())) == 0


class _Projector:
    def __init__(self, matrix, param):
        self.matrix = matrix
        self.param = param  # a reference to the parameter itself must not count as state


class _Wrapper:
    """A wrapper that keeps one inner optimizer per parameter and exposes their states as its own ``.state``."""

    def __init__(self, params):
        self.param_groups = [{"params": list(params)}]
        self.inner = {p: torch.optim.AdamW([p]) for p in self.param_groups[0]["params"]}
        self.state = {p: {"inner": opt, "proj": _Projector(torch.zeros(5, 2), p)} for p, opt in self.inner.items()}


def test_wrapper_with_inner_optimizers_and_plain_objects():
    model = nn.Linear(6, 5)
    wrapper = _Wrapper(model.parameters())
    model(torch.randn(3, 6)).sum().backward()
    for opt in wrapper.inner.values():
        opt.step()
    shared = torch.ones(7)
    first = next(iter(wrapper.state.values()))
    first["views"] = [shared[:3], shared[3:]]  # two views of one storage count once
    expected = 2 * _param_bytes(model) + 4 * 2 + 2 * (5 * 2 * 4) + 7 * 4
    assert optimizer_state_bytes(wrapper) == expected


def test_state_dict_walk_sees_state_kept_outside_state():
    class Hidden(torch.optim.SGD):
        def __init__(self, params):
            super().__init__(params, lr=0.1)
            self.hidden = torch.zeros(10)

        def state_dict(self):
            sd = super().state_dict()
            sd["state"]["hidden"] = self.hidden
            return sd

    opt = Hidden(nn.Linear(2, 2).parameters())
    assert optimizer_state_bytes(opt) == 0
    assert optimizer_state_bytes(opt, from_state_dict=True) == 40


def test_optimizer_state_bytes_rejects_non_optimizer():
    with pytest.raises(TypeError, match="optimizer must be"):
        optimizer_state_bytes([torch.zeros(2)])


def test_saved_bytes_of_matmul_by_hand():
    w = nn.Parameter(torch.randn(8, 4))
    x = torch.randn(3, 8)
    # grad of W needs x (3*8 fp32); W is a parameter and is excluded
    assert saved_activation_bytes(lambda: x @ w) == 3 * 8 * 4
    # a plain tensor that needs grad is not a parameter: grad of x needs it, so it counts too
    w_plain = torch.randn(8, 4, requires_grad=True)
    x_grad = torch.randn(3, 8, requires_grad=True)
    assert saved_activation_bytes(lambda: x_grad @ w_plain) == 3 * 8 * 4 + 8 * 4 * 4
    # no grad needed anywhere: nothing saved
    assert saved_activation_bytes(lambda: x @ torch.randn(8, 4)) == 0


def test_saved_bytes_dedupe_and_exclude_parameter_views():
    lin = nn.Linear(8, 5)
    x = torch.randn(3, 8, requires_grad=True)
    # linear saves x and a transposed view of the weight: only x counts, once, although two ops save it
    assert saved_activation_bytes(lambda: lin(x) + lin(x)) == 3 * 8 * 4


def test_saved_bytes_deterministic_and_reduced_by_checkpointing():
    model = _tiny_llama().train()
    ids = torch.randint(0, 128, (2, 16))

    def loss():
        return model(input_ids=ids, labels=ids).loss

    full = saved_activation_bytes(loss)
    assert full == saved_activation_bytes(loss) > 0
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert saved_activation_bytes(loss) < 0.5 * full


def test_peak_memory_cpu_is_deterministic_and_categorised():
    model = _tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, 128, (2, 8))
    _one_step(model, optimizer, ids)  # create the state first, so both measured calls start alike
    reports = [peak_memory(_one_step, model, optimizer, ids, modules=[model], optimizers=[optimizer]) for _ in range(2)]
    assert reports[0] == reports[1]
    rep = reports[0]
    assert isinstance(rep, MemoryReport) and rep.device == "cpu" and rep.peak_bytes > 0
    assert rep.breakdown["Parameter"] == _param_bytes(model)
    # the step's temporaries are created inside optimizer.step(), so MemTracker files them under Optstate too
    assert rep.breakdown["Optstate"] >= optimizer_state_bytes(optimizer)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert rep.baseline_bytes == _param_bytes(model) + buffers + optimizer_state_bytes(optimizer) + ids.nbytes
    assert rep.breakdown["Total"] == rep.baseline_bytes + rep.peak_bytes


def test_peak_memory_counts_a_known_allocation():
    # one 1000-float tensor created and released inside the call: the peak delta is exactly its bytes
    rep = peak_memory(lambda: torch.zeros(1000).sum(), device="cpu")
    assert rep.peak_bytes == 1000 * 4 + 4  # the buffer, then the 0-d sum while the buffer is still alive


def test_peak_memory_bad_arguments():
    with pytest.raises(TypeError, match="modules must hold"):
        peak_memory(lambda: None, modules=[torch.zeros(1)])
    with pytest.raises(ValueError, match="not supported"):
        peak_memory(lambda: None, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            peak_memory(lambda: None, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_cuda_known_allocation():
    rep = peak_memory(lambda: torch.zeros(1 << 20, device="cuda"), device="cuda")
    assert rep.peak_bytes >= 4 << 20 and rep.method == "torch.cuda.max_memory_allocated"


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (58_869_916, "56.14 MiB"),
        (3 * 1024**3, "3.00 GiB"),
        (-2048, "-2.00 KiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_format_bytes_rejects_non_numbers():
    with pytest.raises(TypeError, match="number of bytes"):
        format_bytes("12")
