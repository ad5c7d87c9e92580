"""Shared peft-lifecycle checks for hf_effi tuners, in the style of peft's own test matrix.

A tuner's test file lists cases and runs them through these checks::

    import _matrix as m          # tests/peft is on sys.path under pytest (no __init__.py)

    CONFIGS = {"mora": lambda: MoRAConfig(r=4, init_weights=False, target_modules=["q_proj", "v_proj"])}
    CASES = m.cases(CONFIGS)                     # pytest.param(name, arch, make_config) for every arch

    @pytest.mark.parametrize("name, arch, make_config", CASES)
    def test_disable_adapter(name, arch, make_config):
        m.check_disable_adapter(arch, make_config)

Every check has the signature ``check_x(arch, make_config, tmp_path=None)``: ``arch`` is a ``hf_effi.testing``
tiny architecture, ``make_config`` a zero-argument factory returning a *fresh* config (configs are mutated by
peft), ``tmp_path`` a directory for checks that save. Configs should use ``init_weights=False`` (a non-identity
adapter) so that round trips can actually fail; checks assert the adapter changes the output where it matters.
Each check builds its own tiny model (< 0.1 s), so checks are independent and cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

import hf_effi
from hf_effi.testing import tiny_model

__all__ = [
    "ARCHS",
    "TOL",
    "X",
    "cases",
    "check_auto_peft_model",
    "check_bf16_base",
    "check_disable_adapter",
    "check_forward_backward_step",
    "check_generate",
    "check_gradient_checkpointing",
    "check_make_optimizes_adapters",
    "check_merge_unmerge",
    "check_multiple_adapters",
    "check_only_adapter_trainable",
    "check_save_load_roundtrip",
    "check_trainer_save_resume",
    "logits",
    "peft_model",
    "prefix_of",
]

ARCHS = ("llama", "mistral", "qwen2", "gemma")
TOL = dict(rtol=1e-4, atol=1e-5)
X = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
ConfigFactory = Callable[[], object]


def cases(configs: dict[str, ConfigFactory], archs: tuple[str, ...] = ARCHS) -> list:
    """``pytest.param(name, arch, make_config, id="name-arch")`` for every config and architecture."""
    return [pytest.param(name, arch, make, id=f"{name}-{arch}") for name, make in configs.items() for arch in archs]


def prefix_of(config) -> str:
    """The tuner prefix (``"mora_"``) peft registered for ``config``'s type."""
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    return PEFT_TYPE_TO_PREFIX_MAPPING[config.peft_type]


def peft_model(arch: str, make_config: ConfigFactory, **kwargs):
    """``get_peft_model(tiny_model(arch).eval(), make_config())`` with a fixed seed."""
    torch.manual_seed(0)
    return get_peft_model(tiny_model(arch).eval(), make_config(), **kwargs)


def logits(model, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_only_adapter_trainable(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """Only tensors carrying the tuner prefix train, and there is at least one."""
    model = peft_model(arch, make_config)
    prefix = prefix_of(model.peft_config["default"])
    names = list(_trainable(model))
    assert names, "no trainable parameters"
    assert all(prefix in n for n in names), [n for n in names if prefix not in n]
    n_train, n_all = model.get_nb_trainable_parameters()
    assert 0 < n_train < n_all


def check_forward_backward_step(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """Loss backward reaches every adapter tensor and nothing else; one optimizer step changes the output."""
    model = peft_model(arch, make_config)
    model.train()
    loss = model(input_ids=X, labels=X).loss
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
        if p.grad is not None:
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"zero/NaN gradient on {n}"
    before = logits(model.eval())
    torch.optim.AdamW(list(_trainable(model).values()), lr=1e-2).step()
    assert not torch.allclose(logits(model), before)


def check_disable_adapter(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """The adapter changes the output; inside ``disable_adapter()`` the output equals the base model's."""
    base = logits(tiny_model(arch).eval())
    model = peft_model(arch, make_config)
    assert (logits(model) - base).abs().max() > 1e-4, "adapter has no effect (use init_weights=False in tests)"
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), base, **TOL)


def check_save_load_roundtrip(arch: str, make_config: ConfigFactory, tmp_path) -> None:
    """save_pretrained -> PeftModel.from_pretrained (frozen and is_trainable=True) -> identical logits; transformers'
    ``load_adapter`` too. The JSON names the type with the ``import hf_effi`` hint."""
    model = peft_model(arch, make_config)
    out = logits(model)
    path = os.path.join(str(tmp_path), "adapter")
    model.save_pretrained(path)
    assert os.path.isfile(os.path.join(path, "adapter_model.safetensors"))
    peft_type = json.load(open(os.path.join(path, "adapter_config.json")))["peft_type"]
    assert "import hf_effi" in peft_type, peft_type
    loaded = PeftModel.from_pretrained(tiny_model(arch).eval(), path)
    torch.testing.assert_close(logits(loaded), out, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = PeftModel.from_pretrained(tiny_model(arch).eval(), path, is_trainable=True)
    assert set(_trainable(trainable)) == set(_trainable(model))
    torch.testing.assert_close(logits(trainable), out, rtol=0, atol=0)
    base = tiny_model(arch).eval()
    base.load_adapter(path, adapter_name="default")
    torch.testing.assert_close(logits(base), out, rtol=0, atol=0)


def check_merge_unmerge(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """merge_adapter / unmerge_adapter / merge_and_unload keep the unmerged logits and return the base class."""
    base_cls = type(tiny_model(arch))
    model = peft_model(arch, make_config)
    out = logits(model)
    model.merge_adapter()
    torch.testing.assert_close(logits(model), out, **TOL)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model), out, **TOL)
    model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(logits(model), out, **TOL)
    model.unmerge_adapter()
    merged = model.merge_and_unload()
    assert type(merged) is base_cls
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    torch.testing.assert_close(logits(merged), out, **TOL)


def check_multiple_adapters(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """A second adapter can be added, switched to (only it trains), switched back and deleted."""
    model = peft_model(arch, make_config)
    out_default = logits(model)
    model.add_adapter("other", make_config())
    with torch.no_grad():  # make "other" differ from "default" (same seeded init otherwise)
        for n, p in model.named_parameters():
            if ".other" in n:
                p.mul_(0.5).add_(0.01)
    torch.testing.assert_close(logits(model), out_default, **TOL)  # adding does not activate
    model.set_adapter("other")
    trainable = list(_trainable(model))
    assert trainable and all(".other" in n for n in trainable), trainable[:3]
    assert not torch.allclose(logits(model), out_default, **TOL)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model), out_default, **TOL)
    model.delete_adapter("other")
    assert "other" not in model.peft_config
    assert not any(".other" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model), out_default, **TOL)


def check_auto_peft_model(arch: str, make_config: ConfigFactory, tmp_path) -> None:
    """AutoPeftModelForCausalLM loads base + adapter from the adapter folder alone."""
    base_dir = os.path.join(str(tmp_path), "base")
    tiny_model(arch).save_pretrained(base_dir)
    torch.manual_seed(0)
    base = tiny_model(arch).eval()
    base.name_or_path = base_dir
    config = make_config()
    config.base_model_name_or_path = base_dir
    model = get_peft_model(base, config)
    out = logits(model)
    path = os.path.join(str(tmp_path), "auto")
    model.save_pretrained(path)
    loaded = AutoPeftModelForCausalLM.from_pretrained(path)
    torch.testing.assert_close(logits(loaded.eval()), out, **TOL)  # reloaded config may pick another attention kernel


def check_generate(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """generate() runs with the adapter and gives the same greedy tokens as the merged model."""
    model = peft_model(arch, make_config)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    tokens = model.generate(input_ids=X[:1], **kwargs)
    assert tokens.shape == (1, X.shape[1] + 4)
    merged = model.merge_and_unload()
    assert torch.equal(merged.generate(input_ids=X[:1], **kwargs), tokens)


def check_gradient_checkpointing(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """With gradient checkpointing + enable_input_require_grads the adapter gradients equal the plain ones."""
    grads = []
    for checkpointing in (False, True):
        model = peft_model(arch, make_config)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
        model(input_ids=X, labels=X).loss.backward()
        grads.append({n: p.grad.clone() for n, p in _trainable(model).items()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def check_bf16_base(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """A bf16 base gets fp32 adapter tensors (peft's autocast_adapter_dtype); forward stays bf16 and trains."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(arch).to(torch.bfloat16).eval(), make_config())
    params = _trainable(model)
    assert params and all(p.dtype == torch.float32 for p in params.values()), {n: p.dtype for n, p in params.items()}
    model.train()
    out = model(input_ids=X, labels=X)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())


def check_make_optimizes_adapters(arch: str, make_config: ConfigFactory, tmp_path=None) -> None:
    """hf_effi.make(...) on the PEFT model optimizes exactly the adapter parameters."""
    model = peft_model(arch, make_config)
    optimizer, _ = hf_effi.make("adamw", model, lr=1e-3, num_training_steps=2)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in _trainable(model).values()}


class _Batches(torch.utils.data.Dataset):
    def __init__(self, n: int = 8, length: int = 12) -> None:
        g = torch.Generator().manual_seed(2)
        self.ids = torch.randint(0, 256, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def check_trainer_save_resume(arch: str, make_config: ConfigFactory, tmp_path) -> None:
    """A 2-step Trainer run saves adapter_model.safetensors per checkpoint; resuming from step 1 ends with the
    same adapter weights as the uninterrupted run."""
    from transformers import Trainer, TrainingArguments

    def run(out_dir: str, resume: str | None):
        model = peft_model(arch, make_config)
        args = TrainingArguments(
            output_dir=out_dir,
            max_steps=2,
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            save_steps=1,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        Trainer(model=model, args=args, train_dataset=_Batches()).train(resume_from_checkpoint=resume)
        return {n: p.detach().clone() for n, p in _trainable(model).items()}

    out_dir = os.path.join(str(tmp_path), "trainer")
    full = run(out_dir, None)
    ckpt = os.path.join(out_dir, "checkpoint-1")
    assert os.path.isfile(os.path.join(ckpt, "adapter_model.safetensors")), os.listdir(ckpt)
    assert os.path.isfile(os.path.join(out_dir, "checkpoint-2", "adapter_model.safetensors"))
    resumed = run(os.path.join(str(tmp_path), "trainer_resumed"), ckpt)
    assert full.keys() == resumed.keys()
    for n in full:
        torch.testing.assert_close(resumed[n], full[n], rtol=1e-5, atol=1e-6, msg=n)
