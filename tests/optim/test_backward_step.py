"""LayerwiseOptimizer in plain loops: equal to torch AdamW, accumulation, resume, grad norm, misuse, memory."""

import copy
import io
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from hf_effi.optim.backward_step import LayerwiseOptimizer, check_not_distributed
from hf_effi.testing import tiny_model
from hf_effi.utils.memory import optimizer_state_bytes

VOCAB = 128


def _tiny_llama(tie: bool = False) -> LlamaForCausalLM:
    return tiny_model("llama", vocab_size=VOCAB, tie_word_embeddings=tie)


def _twin(model: LlamaForCausalLM) -> LlamaForCausalLM:
    return copy.deepcopy(model)  # parameters are copied, gradient hooks are not


def _groups(model):
    """Two groups with different lr and weight decay, in model order, with names (as hf_effi's factory builds)."""
    named = list(model.named_parameters())
    mats = [(n, p) for n, p in named if p.ndim >= 2]
    vecs = [(n, p) for n, p in named if p.ndim < 2]
    return [
        {"params": [p for _, p in mats], "param_names": [n for n, _ in mats], "lr": 1e-2, "weight_decay": 0.1},
        {"params": [p for _, p in vecs], "param_names": [n for n, _ in vecs], "lr": 3e-3, "weight_decay": 0.0},
    ]


def _adamw(groups):
    # foreach=False on both sides: the single-tensor kernel, so the wrapper and the reference match bit for bit.
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), foreach=False)


def _batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 12), generator=g) for _ in range(n)]


def _train(model, optimizer, batches, ga: int = 1, scheduler=None, windows=None) -> list[float]:
    """Plain loop: loss/window, backward per micro-batch, step + zero_grad per window. Returns total grad norms."""
    windows = windows or [ga] * (len(batches) // ga)
    norms, it = [], iter(batches)
    for size in windows:
        for _ in range(size):
            ids = next(it)
            (model(input_ids=ids, labels=ids).loss / size).backward()
        if not isinstance(optimizer, LayerwiseOptimizer):
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf).item())
        optimizer.step()
        if isinstance(optimizer, LayerwiseOptimizer):
            norms.append(optimizer.last_grad_norm)
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad()
    return norms


def _assert_same_params(a, b):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), f"{name} differs by {(pa - pb).abs().max().item():.3e}"


SCHEDULES = {
    "none": lambda opt: None,
    "lambda": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)),
    # OneCycleLR also cycles betas[0]: hyperparameters other than lr must reach the inner optimizers too.
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[2e-2, 6e-3], total_steps=8),
}


@pytest.mark.parametrize("ga", [1, 3], ids=["ga1", "ga3"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_equals_adamw(ga, schedule):
    ref_model = _tiny_llama()
    lw_model = _twin(ref_model)
    ref = _adamw(_groups(ref_model))
    lw = LayerwiseOptimizer(_groups(lw_model), _adamw, gradient_accumulation_steps=ga)
    batches = _batches(5 * ga)
    ref_norms = _train(ref_model, ref, batches, ga, SCHEDULES[schedule](ref))
    lw_norms = _train(lw_model, lw, batches, ga, SCHEDULES[schedule](lw))
    _assert_same_params(ref_model, lw_model)
    assert [g["lr"] for g in lw.param_groups] == [g["lr"] for g in ref.param_groups]
    assert [g["betas"] for g in lw.param_groups] == [g["betas"] for g in ref.param_groups]
    # Same per-tensor norms; only the order of the final sum differs (group order vs model order).
    assert lw_norms == pytest.approx(ref_norms, rel=1e-6)


def test_sync_source_decides_the_last_micro_batch():
    ref_model = _tiny_llama()
    lw_model = _twin(ref_model)
    ref, lw = _adamw(_groups(ref_model)), LayerwiseOptimizer(_groups(lw_model), _adamw)
    flag = {"sync": False}
    lw.set_sync_source(lambda: flag["sync"])
    windows, batches = [3, 1, 2], _batches(6)
    _train(ref_model, ref, batches, windows=windows)
    it = iter(batches)
    for size in windows:
        for k in range(size):
            flag["sync"] = k == size - 1
            ids = next(it)
            (lw_model(input_ids=ids, labels=ids).loss / size).backward()
            assert all((p.grad is None) == flag["sync"] for p in lw_model.parameters())
        lw.step()
    _assert_same_params(ref_model, lw_model)


def test_counter_handles_a_short_window_like_adamw():
    # The epoch's remainder window: step() after fewer backward passes updates with the accumulated gradient.
    ref_model = _tiny_llama()
    lw_model = _twin(ref_model)
    ref = _adamw(_groups(ref_model))
    lw = LayerwiseOptimizer(_groups(lw_model), _adamw, gradient_accumulation_steps=2)
    batches = _batches(7)
    _train(ref_model, ref, batches, windows=[2, 2, 1, 2])
    _train(lw_model, lw, batches, windows=[2, 2, 1, 2])
    _assert_same_params(ref_model, lw_model)


def test_state_dict_resume_is_exact():
    full_model = _tiny_llama()
    part_model, resumed_model = _twin(full_model), _twin(full_model)
    batches = _batches(6)
    full = LayerwiseOptimizer(_groups(full_model), _adamw)
    _train(full_model, full, batches, scheduler=SCHEDULES["lambda"](full))

    part = LayerwiseOptimizer(_groups(part_model), _adamw)
    part_sched = SCHEDULES["lambda"](part)
    _train(part_model, part, batches[:3], scheduler=part_sched)
    buffer = io.BytesIO()
    torch.save({"model": part_model.state_dict(), "opt": part.state_dict(), "sched": part_sched.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    assert sorted(ckpt["opt"]["state"]) == list(range(len(list(part_model.parameters()))))
    assert set(ckpt["opt"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert ckpt["opt"]["param_groups"][1]["param_names"] == _groups(part_model)[1]["param_names"]

    resumed_model.load_state_dict(ckpt["model"])
    resumed = LayerwiseOptimizer(_groups(resumed_model), _adamw)
    sched = SCHEDULES["lambda"](resumed)  # Trainer's order: build both, then load the optimizer, then the schedule
    resumed.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in part.param_groups]
    _train(resumed_model, resumed, batches[3:], scheduler=sched)
    _assert_same_params(full_model, resumed_model)


def test_state_is_shared_with_the_inner_optimizers_and_as_large_as_adamw():
    ref_model = _tiny_llama()
    lw_model = _twin(ref_model)
    ref, lw = _adamw(_groups(ref_model)), LayerwiseOptimizer(_groups(lw_model), _adamw)
    batches = _batches(1)
    _train(ref_model, ref, batches)
    _train(lw_model, lw, batches)
    assert optimizer_state_bytes(lw) == optimizer_state_bytes(ref) > 0
    for p_ref, p_lw in zip(ref_model.parameters(), lw_model.parameters()):
        assert torch.equal(lw.state[p_lw]["exp_avg_sq"], ref.state[p_ref]["exp_avg_sq"])
    # Another load keeps optimizer.state pointing at the live inner states.
    lw.load_state_dict(lw.state_dict())
    _train(lw_model, lw, batches)
    assert all(float(lw.state[p]["step"]) == 2.0 for p in lw_model.parameters())


def test_loop_with_more_backward_passes_than_ga_is_refused():
    model = _tiny_llama()
    lw = LayerwiseOptimizer(_groups(model), _adamw, gradient_accumulation_steps=1)
    with pytest.raises(RuntimeError, match="updated more than once since the last step"):
        _train(model, lw, _batches(2), ga=2)


def test_loop_with_fewer_backward_passes_than_ga_is_refused():
    model = _tiny_llama()
    lw = LayerwiseOptimizer(_groups(model), _adamw, gradient_accumulation_steps=4)
    _train(model, lw, _batches(1), ga=1)  # one short window is legal: an epoch may end mid-window
    with pytest.raises(RuntimeError, match="gradient_accumulation_steps=4"):
        _train(model, lw, _batches(1), ga=1)


def test_closure_is_rejected():
    model = _tiny_llama()
    lw = LayerwiseOptimizer(_groups(model), _adamw)
    with pytest.raises(ValueError, match="closure"):
        lw.step(lambda: model(input_ids=_batches(1)[0]).logits.sum())


def test_per_param_clipping_clips_each_gradient_to_its_norm():
    max_norm = 0.05
    model = _tiny_llama()
    probe = _twin(model)
    ids = _batches(1)[0]
    probe(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad.clone() for p in probe.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    sgd = LayerwiseOptimizer(
        model.parameters(), lambda g: torch.optim.SGD(g, lr=1.0), max_grad_norm_per_param=max_norm
    )
    _train(model, sgd, [ids])
    clipped_some = False
    for g, p0, p1 in zip(grads, before, model.parameters()):
        norm = torch.linalg.vector_norm(g)
        expected = g * torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        torch.testing.assert_close(p0 - p1, expected, rtol=1e-5, atol=1e-7)
        assert torch.linalg.vector_norm(p0 - p1) <= max_norm * (1 + 1e-5)
        clipped_some |= bool(norm > max_norm)
    assert clipped_some
    # The reported norm is the pre-clip one.
    assert sgd.last_grad_norm == pytest.approx(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


@pytest.mark.parametrize("reentrant", [False, True], ids=["checkpoint", "reentrant-checkpoint"])
def test_gradient_checkpointing_fires_once_per_parameter(reentrant):
    ref_model = _tiny_llama()
    lw_model = _twin(ref_model)
    lw_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    mlp_calls = []
    lw_model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: mlp_calls.append(1))
    _check_once_and_equal(ref_model, lw_model)
    assert len(mlp_calls) == 2 * 3  # forward + recomputation in backward: checkpointing really ran


def test_tied_embeddings_fire_once_after_both_contributions():
    ref_model = _tiny_llama(tie=True)
    lw_model = _twin(ref_model)
    assert lw_model.lm_head.weight is lw_model.model.embed_tokens.weight
    _check_once_and_equal(ref_model, lw_model)


def _check_once_and_equal(ref_model, lw_model):
    fired = {id(p): 0 for p in lw_model.parameters()}
    for p in lw_model.parameters():
        p.register_post_accumulate_grad_hook(lambda t: fired.__setitem__(id(t), fired[id(t)] + 1))
    ref, lw = _adamw(_groups(ref_model)), LayerwiseOptimizer(_groups(lw_model), _adamw)
    batches = _batches(3)
    _train(ref_model, ref, batches)
    _train(lw_model, lw, batches)
    assert set(fired.values()) == {3}
    _assert_same_params(ref_model, lw_model)


def test_distributed_is_refused(monkeypatch):
    check_not_distributed(world_size=1)
    with pytest.raises(RuntimeError, match="world_size=2"):
        check_not_distributed(world_size=2)
    model = _tiny_llama()
    lw = LayerwiseOptimizer(_groups(model), _adamw)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    ids = _batches(1)[0]
    with pytest.raises(RuntimeError, match="before DDP/FSDP average"):
        model(input_ids=ids, labels=ids).loss.backward()
    assert lw.last_grad_norm is None  # refused before the first update
    with pytest.raises(RuntimeError, match="layerwise=False"):
        LayerwiseOptimizer(_groups(_twin(model)), _adamw)


def test_bad_arguments_get_clear_errors():
    model = _tiny_llama()
    params = list(model.parameters())
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be an int >= 1, got 0"):
        LayerwiseOptimizer(params, _adamw, gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="max_grad_norm_per_param"):
        LayerwiseOptimizer(params, _adamw, max_grad_norm_per_param=-1.0)
    with pytest.raises(TypeError, match="inner_factory must be callable"):
        LayerwiseOptimizer(params, "adamw")
    with pytest.raises(ValueError, match="exactly the one parameter"):
        LayerwiseOptimizer(params, lambda g: torch.optim.AdamW(params[:1]))
    with pytest.raises(TypeError, match="set_sync_source"):
        LayerwiseOptimizer(params, _adamw).set_sync_source(True)
    params[0].requires_grad_(False)
    with pytest.raises(ValueError, match="model.embed_tokens.weight .* requires_grad=False"):
        LayerwiseOptimizer(_groups(model), _adamw)


def test_failed_construction_leaves_no_hooks():
    model = _tiny_llama()
    model.model.norm.weight.requires_grad_(False)  # in the second group: the first group's hooks already exist
    with pytest.raises(ValueError, match="model.norm.weight .* requires_grad=False"):
        LayerwiseOptimizer(_groups(model), _adamw)
    before = [p.detach().clone() for p in model.parameters()]
    ids = _batches(1)[0]
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_one_live_optimizer_per_parameter():
    model = _tiny_llama()
    first = LayerwiseOptimizer(_groups(model), _adamw)
    with pytest.raises(ValueError, match="already updated by another live LayerwiseOptimizer"):
        LayerwiseOptimizer(_groups(model), _adamw)
    first.remove_hooks()
    ids = _batches(1)[0]
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # detached: gradients only accumulate
    model.zero_grad()
    del first  # a discarded optimizer must not update, and a new one can take over
    second = LayerwiseOptimizer(_groups(model), _adamw)
    _train(model, second, [ids])
    assert all(float(second.state[p]["step"]) == 1.0 for p in model.parameters())
    # A deep copy of a hooked model (a reference or EMA model) gets its own optimizer; the original is untouched.
    copy_model = _twin(model)
    before = [p.detach().clone() for p in model.parameters()]
    _train(copy_model, LayerwiseOptimizer(_groups(copy_model), _adamw), [ids])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, copy_model.parameters()))


def test_full_gradient_never_exists():
    """Peak bytes of live ``.grad`` tensors during backward: one parameter's worth instead of the whole model."""

    def peak_grad_bytes(layerwise: bool) -> int:
        model = _tiny_llama()
        live = {"peak": 0}

        def measure(_):
            total = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
            live["peak"] = max(live["peak"], total)

        for p in model.parameters():  # registered first, so it runs before the optimizer's hook
            p.register_post_accumulate_grad_hook(measure)
        opt = LayerwiseOptimizer(_groups(model), _adamw) if layerwise else _adamw(_groups(model))
        _train(model, opt, _batches(1))
        return live["peak"]

    sizes = [p.numel() * p.element_size() for p in _tiny_llama().parameters()]
    assert peak_grad_bytes(False) == sum(sizes)
    assert peak_grad_bytes(True) == max(sizes)
