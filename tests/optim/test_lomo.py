"""LOMO / AdaLomo: hand-computed steps, fused-in-backward behaviour, accumulation, checkpointing, resume, misuse."""

import copy
import io
import math

import pytest
import torch
from datasets import Dataset

import hf_effi
import hf_effi.optim.lomo  # noqa: F401  (registers lomo and adalomo until hf_effi.optim imports it)
from hf_effi.optim.lomo import AdaLomoStep, FusedBackwardOptimizer, LomoStep, build_adalomo, build_lomo
from hf_effi.testing import tiny_model
from hf_effi.utils.memory import optimizer_state_bytes

VOCAB = 64


def _model(seed=0):
    return tiny_model("llama", vocab_size=VOCAB, seed=seed)


def _counting_batch(n, seq, seed):
    """Sequences t, t+1, t+2, ... (mod VOCAB): learnable, so held-out loss must fall."""
    start = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + torch.arange(seq)) % VOCAB


def _loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


# -- hand-computed single steps (the papers' equations, written out element by element) -------------------------


def test_lomo_step_is_sgd_with_decoupled_decay():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    p.grad = torch.tensor([0.5, -1.0, 2.0])
    LomoStep([{"params": [p], "lr": 0.1, "weight_decay": 0.2}]).step()
    expected = [w * (1 - 0.1 * 0.2) - 0.1 * g for w, g in zip([1.0, -2.0, 0.5], [0.5, -1.0, 2.0])]
    torch.testing.assert_close(p.detach(), torch.tensor(expected))


def _adalomo_by_hand(w, grads, lr, eps1, eps2, d, decay_rate, wd):
    """AdaLomo, Alg. 1 of arXiv 2310.10195, for a list-of-lists matrix and a sequence of gradients."""
    m, n = len(w), len(w[0])
    w = [row[:] for row in w]
    r, c = [0.0] * m, [0.0] * n
    for t, g in enumerate(grads, start=1):
        beta = 1 - t**decay_rate
        sq = [[g[i][j] ** 2 + eps1 for j in range(n)] for i in range(m)]
        r = [beta * r[i] + (1 - beta) * sum(sq[i]) / n for i in range(m)]
        c = [beta * c[j] + (1 - beta) * sum(sq[i][j] for i in range(m)) / m for j in range(n)]
        r_mean = sum(r) / m
        u = [[g[i][j] / math.sqrt(r[i] * c[j] / r_mean) for j in range(n)] for i in range(m)]
        rms_u = math.sqrt(sum(x * x for row in u for x in row) / (m * n))
        u = [[x / max(1.0, rms_u / d) for x in row] for row in u]
        rms_w = math.sqrt(sum(x * x for row in w for x in row) / (m * n))
        alpha = lr * max(eps2, rms_w)
        w = [[w[i][j] * (1 - alpha * wd) - alpha * u[i][j] for j in range(n)] for i in range(m)]
    return w


@pytest.mark.parametrize("clip_threshold", [1.0, 0.05], ids=["clip1", "clip-active"])
def test_adalomo_two_steps_match_hand_computation(clip_threshold):
    w0 = [[0.5, -1.0, 2.0], [0.1, 0.3, -0.7]]
    grads = [[[0.2, -0.4, 1.0], [0.05, 0.0, -0.3]], [[-0.1, 0.6, 0.2], [0.3, -0.2, 0.1]]]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = AdaLomoStep([p], lr=0.1, eps=(1e-30, 1e-3), clip_threshold=clip_threshold, weight_decay=0.1)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _adalomo_by_hand(w0, grads, 0.1, 1e-30, 1e-3, clip_threshold, -0.8, 0.1)
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert set(opt.state[p]) == {"step", "exp_avg_sq_row", "exp_avg_sq_col"}
    assert opt.state[p]["exp_avg_sq_row"].shape == (2,) and opt.state[p]["exp_avg_sq_col"].shape == (3,)


def test_adalomo_vector_keeps_full_second_moment_and_eps2_floors_the_step():
    p = torch.nn.Parameter(torch.zeros(4))  # RMS(p) = 0: the step is lr * eps2
    p.grad = torch.tensor([1.0, -2.0, 0.5, 0.0])
    opt = AdaLomoStep([p], lr=0.5, eps=(1e-30, 1e-3))
    opt.step()
    # step 1: v = g**2 + eps1, u = sign(g) (0 for g = 0), RMS(u) = sqrt(3/4) < 1: no normalisation
    torch.testing.assert_close(p.detach(), -0.5 * 1e-3 * torch.tensor([1.0, -1.0, 1.0, 0.0]))
    assert opt.state[p]["exp_avg_sq"].shape == (4,)


def test_adalomo_bf16_parameter_updates_in_fp32_and_stays_bf16():
    p = torch.nn.Parameter(torch.randn(3, 5, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16))
    ref = torch.nn.Parameter(p.detach().float())
    p.grad = torch.randn(3, 5, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    ref.grad = p.grad.float()
    AdaLomoStep([p], lr=1e-2).step()
    AdaLomoStep([ref], lr=1e-2).step()
    assert p.dtype == torch.bfloat16
    torch.testing.assert_close(p.detach(), ref.detach().to(torch.bfloat16), rtol=0, atol=0)


# -- fused into backward ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lomo", "adalomo"])
def test_make_is_fused_and_no_gradient_survives_backward(name):
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, _ = hf_effi.make(name, model, lr=1e-2, num_training_steps=4)
    assert isinstance(opt, FusedBackwardOptimizer)
    _loss(model, _counting_batch(2, 12, 0)).backward()
    alive = [n for n, p in model.named_parameters() if p.grad is not None]
    assert alive == [], f"gradients alive after backward: {alive}"
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # every parameter updated inside backward
    opt.step()
    assert opt.last_grad_norm > 0


def test_make_with_layerwise_is_refused_and_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="layerwise"):
        hf_effi.make_optimizer("adalomo", _model(), lr=1e-3, layerwise=True)
    with pytest.raises(ValueError, match="decay_rate"):
        hf_effi.make_optimizer("adalomo", _model(), lr=1e-3, decay_rate=0.5)
    with pytest.raises(ValueError, match="eps"):
        build_adalomo([torch.nn.Parameter(torch.ones(2))], lr=1e-3, eps=1e-3)
    with pytest.raises(ValueError, match="lr"):
        build_lomo([torch.nn.Parameter(torch.ones(2))], lr=-1.0)


@pytest.mark.parametrize("name", ["lomo", "adalomo"])
def test_training_lowers_held_out_loss(name):
    model = _model()
    lr = {"lomo": 0.5, "adalomo": 3e-2}[name]
    opt = hf_effi.make_optimizer(name, model, lr=lr)
    held_out = _counting_batch(8, 16, seed=999)
    with torch.no_grad():
        start = _loss(model, held_out).item()
    for step in range(25):
        _loss(model, _counting_batch(8, 16, seed=step)).backward()
        opt.step()
    with torch.no_grad():
        end = _loss(model, held_out).item()
    assert end < 0.8 * start, f"{name}: held-out loss {start:.3f} -> {end:.3f}"


def test_gradient_accumulation_updates_once_with_the_summed_gradient():
    a, b = _counting_batch(2, 12, 0), _counting_batch(2, 12, 1)
    accum, whole = _model(), _model()
    opt_accum = build_adalomo(list(accum.parameters()), lr=1e-2, gradient_accumulation_steps=2)
    opt_whole = build_adalomo(list(whole.parameters()), lr=1e-2)
    for _ in range(2):
        (_loss(accum, a) / 2).backward()
        assert any(p.grad is not None for p in accum.parameters())  # first micro-batch only accumulates
        (_loss(accum, b) / 2).backward()
        assert all(p.grad is None for p in accum.parameters())
        opt_accum.step()
        ((_loss(whole, a) + _loss(whole, b)) / 2).backward()
        opt_whole.step()
    ref = dict(whole.named_parameters())
    for n, p in accum.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=1e-5, atol=1e-6, msg=n)
    assert int(opt_accum.state_dict()["state"][0]["step"]) == 2


def test_gradient_checkpointing_gives_the_same_update_and_frees_gradients():
    plain, ckpt = _model(), _model()
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt.train()
    opts = [hf_effi.make_optimizer("adalomo", m, lr=1e-2) for m in (plain, ckpt)]
    for step in range(2):
        for m, o in zip((plain, ckpt), opts):
            _loss(m, _counting_batch(2, 12, step)).backward()
            assert all(p.grad is None for p in m.parameters())
            o.step()
    ref = dict(plain.named_parameters())
    for n, p in ckpt.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=1e-6, atol=1e-7, msg=n)


def test_fp16_grad_scaler_is_refused():
    model = _model()
    opt = hf_effi.make_optimizer("lomo", model, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(_loss(model, _counting_batch(2, 8, 0))).backward()
    with pytest.raises(RuntimeError, match="GradScaler"):
        scaler.step(opt)


def test_effi_trainer_refuses_fp16_for_adalomo_at_construction(tmp_path):
    from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

    args = EffiTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", effi_optim="adalomo")
    args.fp16 = True  # set after validation: TrainingArguments itself may refuse fp16 on CPU first
    ds = Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]]})
    with pytest.raises(ValueError, match="fp16"):
        EffiTrainer(model=_model(), args=args, train_dataset=ds)


# -- state ------------------------------------------------------------------------------------------------------


def test_state_is_tiny_weights_only_and_resumes_bit_for_bit():
    model = _model()
    full, twin = model, copy.deepcopy(model)
    opt = hf_effi.make_optimizer("adalomo", full, lr=1e-2, weight_decay=0.1)
    for step in range(2):
        _loss(full, _counting_batch(2, 12, step)).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    twin.load_state_dict(full.state_dict())
    twin_opt = hf_effi.make_optimizer("adalomo", twin, lr=1e-2, weight_decay=0.1)
    buf.seek(0)
    twin_opt.load_state_dict(torch.load(buf, weights_only=True))
    for m, o in ((full, opt), (twin, twin_opt)):
        for step in range(2, 4):
            _loss(m, _counting_batch(2, 12, step)).backward()
            o.step()
    ref = dict(full.named_parameters())
    for n, p in twin.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=0, atol=0, msg=n)
    # factored fp32 state: O(m + n) per matrix, well under AdamW's 8 bytes/param even here
    n_params = sum(p.numel() for p in full.parameters())
    assert optimizer_state_bytes(opt) < 0.2 * 8 * n_params


# -- through Trainer --------------------------------------------------------------------------------------------


def _trainer_run(out, resume, name, ga):
    from hf_effi.trainers import EffiTrainer, EffiTrainingArguments

    ids = _counting_batch(48, 16, 0)
    args = EffiTrainingArguments(
        output_dir=str(out),
        max_steps=8,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=ga,
        save_strategy="steps",
        save_steps=4,
        use_cpu=True,
        report_to="none",
        seed=0,
        logging_steps=1,
        disable_tqdm=True,
        learning_rate=1e-2,
        weight_decay=0.1,
        effi_optim=name,
        effi_schedule="cosine",
        warmup_steps=2,
    )
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    trainer = EffiTrainer(model=_model(), args=args, train_dataset=ds)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("name,ga", [("adalomo", 1), ("adalomo", 2), ("lomo", 2)])
def test_trainer_resume_is_bit_for_bit(tmp_path, name, ga):
    full = _trainer_run(tmp_path / "full", None, name, ga)
    ckpt = tmp_path / "full" / "checkpoint-4"
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    if name == "adalomo":
        assert saved["state"] and all("step" in s for s in saved["state"].values())
    resumed = _trainer_run(tmp_path / "resumed", str(ckpt), name, ga)
    ref = dict(full.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=0, atol=0, msg=f"{n} differs after resume")
    norms = [h["grad_norm"] for h in full.state.log_history if "grad_norm" in h]
    assert norms and all(v > 0 for v in norms)


def test_adalomo_step_needs_no_full_size_temporary():
    from hf_effi.utils.memory import peak_memory

    layer = torch.nn.Linear(512, 256, bias=False)
    layer.weight.grad = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    opt = AdaLomoStep(layer.parameters(), lr=1e-3)
    opt.step()  # allocates the state
    layer.weight.grad = torch.randn(256, 512, generator=torch.Generator().manual_seed(1))
    report = peak_memory(opt.step, modules=[layer], optimizers=[opt])
    assert report.peak_bytes < 0.1 * layer.weight.numel() * 4, report
