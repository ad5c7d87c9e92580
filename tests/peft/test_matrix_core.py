"""The peft lifecycle of MoRA (both operator types), PMSS and SVFit over tiny Llama, Mistral, Qwen2 and Gemma:
a flat list of (name, arch, config) cases run through the shared checks in ``_matrix.py``."""

from __future__ import annotations

import _matrix as m  # tests/peft is on sys.path (pytest rootdir-less "prepend" import mode)
import pytest

from hf_effi.peft import MoRAConfig, PMSSConfig, SVFitConfig

TARGETS = ["q_proj", "v_proj", "down_proj"]
CONFIGS = {  # init_weights=False: a non-identity adapter, so round trips can fail
    "mora6": lambda: MoRAConfig(r=4, mora_type=6, init_weights=False, target_modules=TARGETS),
    "mora1": lambda: MoRAConfig(r=4, mora_type=1, init_weights=False, target_modules=TARGETS),
    "pmss": lambda: PMSSConfig(r=16, init_weights=False, target_modules=TARGETS),
    "svfit": lambda: SVFitConfig(r=8, init_weights=False, target_modules=TARGETS),
}
CASES = m.cases(CONFIGS)
LLAMA_CASES = m.cases(CONFIGS, archs=("llama",))  # the costlier checks run on one architecture


@pytest.mark.parametrize("name, arch, make_config", CASES)
def test_only_adapter_trainable(name, arch, make_config):
    m.check_only_adapter_trainable(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", CASES)
def test_forward_backward_step(name, arch, make_config):
    m.check_forward_backward_step(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", CASES)
def test_disable_adapter(name, arch, make_config):
    m.check_disable_adapter(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", CASES)
def test_save_load_roundtrip(name, arch, make_config, tmp_path):
    m.check_save_load_roundtrip(arch, make_config, tmp_path)


@pytest.mark.parametrize("name, arch, make_config", CASES)
def test_merge_unmerge(name, arch, make_config):
    m.check_merge_unmerge(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", CASES)
def test_multiple_adapters(name, arch, make_config):
    m.check_multiple_adapters(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", CASES)
def test_bf16_base(name, arch, make_config):
    m.check_bf16_base(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", LLAMA_CASES)
def test_make_optimizes_adapters(name, arch, make_config):
    m.check_make_optimizes_adapters(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", LLAMA_CASES)
def test_generate(name, arch, make_config):
    m.check_generate(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", LLAMA_CASES)
def test_gradient_checkpointing(name, arch, make_config):
    m.check_gradient_checkpointing(arch, make_config)


@pytest.mark.parametrize("name, arch, make_config", LLAMA_CASES)
def test_auto_peft_model(name, arch, make_config, tmp_path):
    m.check_auto_peft_model(arch, make_config, tmp_path)


TRAINER_CASES = [  # one Trainer run per tuner, each on a different architecture
    pytest.param(name, arch, CONFIGS[name], id=f"{name}-{arch}")
    for name, arch in (("mora6", "qwen2"), ("mora1", "llama"), ("pmss", "mistral"), ("svfit", "gemma"))
]


@pytest.mark.parametrize("name, arch, make_config", TRAINER_CASES)
def test_trainer_save_resume(name, arch, make_config, tmp_path):
    m.check_trainer_save_resume(arch, make_config, tmp_path)
