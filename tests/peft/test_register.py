"""How hf_effi's tuners enter peft: enum extension, idempotent registration, reload, version guard."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from peft import PeftConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import hf_effi
from hf_effi.peft import _register
from hf_effi.peft.mora import MoRAConfig, MoRAModel
from hf_effi.testing import tiny_model


@pytest.mark.parametrize("name", ["mora", "pmss", "svfit"])
def test_import_hf_effi_registers_core_tuners(name):
    key = name.upper()
    member = PeftType[key]
    assert member.value == key and member == key and member in list(PeftType)
    assert PeftType(key) is member
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == f"{name}_"
    assert PEFT_TYPE_TO_CONFIG_MAPPING[key] is _register.registered_tuners()[name][0]
    assert PEFT_TYPE_TO_CONFIG_MAPPING[_register.load_hint(key)] is PEFT_TYPE_TO_CONFIG_MAPPING[key]
    assert name in hf_effi.peft.registered_tuners()


def test_register_twice_is_a_no_op():
    before = dict(PEFT_TYPE_TO_TUNER_MAPPING)
    n_members = len(PeftType)
    _register.register_tuner(name="mora", config_cls=MoRAConfig, model_cls=MoRAModel, prefix="mora_")
    assert dict(PEFT_TYPE_TO_TUNER_MAPPING) == before and len(PeftType) == n_members


def test_reload_points_peft_at_the_new_classes():
    import hf_effi.peft.mora as mora_pkg
    import hf_effi.peft.mora.config as mora_config
    import hf_effi.peft.mora.model as mora_model

    try:
        new_config = importlib.reload(mora_config)
        new_model = importlib.reload(mora_model)
        importlib.reload(mora_pkg)
        assert PEFT_TYPE_TO_CONFIG_MAPPING["MORA"] is new_config.MoRAConfig
        assert PEFT_TYPE_TO_TUNER_MAPPING["MORA"] is new_model.MoRAModel
        model = get_peft_model(tiny_model("llama"), new_config.MoRAConfig(r=4, target_modules=["q_proj"]))
        assert model.peft_config["default"].peft_type is PeftType.MORA
    finally:  # leave the original classes registered for the other tests
        _register.register_tuner(name="mora", config_cls=MoRAConfig, model_cls=MoRAModel, prefix="mora_")
        mora_pkg.MoRAConfig, mora_pkg.MoRAModel = MoRAConfig, MoRAModel
        mora_config.MoRAConfig, mora_model.MoRAModel = MoRAConfig, MoRAModel
    assert PEFT_TYPE_TO_CONFIG_MAPPING["MORA"] is MoRAConfig


def test_config_json_round_trip_restores_the_enum(tmp_path):
    MoRAConfig(r=4, target_modules=["q_proj"]).save_pretrained(str(tmp_path))
    data = json.load(open(tmp_path / "adapter_config.json"))
    assert data["peft_type"] == _register.load_hint("MORA")
    loaded = PeftConfig.from_pretrained(str(tmp_path))
    assert type(loaded) is MoRAConfig and loaded.peft_type is PeftType.MORA and loaded.r == 4


def test_plain_type_string_in_json_also_loads(tmp_path):
    MoRAConfig(r=4, target_modules=["q_proj"]).save_pretrained(str(tmp_path))
    path = tmp_path / "adapter_config.json"
    data = json.load(open(path))
    data["peft_type"] = "MORA"
    path.write_text(json.dumps(data))
    assert type(PeftConfig.from_pretrained(str(tmp_path))) is MoRAConfig


def test_incompatible_peft_version_is_refused(monkeypatch):
    monkeypatch.setattr(_register.metadata, "version", lambda name: "0.14.0")
    with pytest.raises(ImportError, match=r"supports peft>=0\.21,<0\.22, but peft 0\.14\.0 is installed"):
        _register.register_tuner(name="mora", config_cls=MoRAConfig, model_cls=MoRAModel, prefix="mora_")


def test_name_taken_by_peft_is_refused():
    with pytest.raises(ValueError, match="peft already has a tuner LORA"):
        _register.register_tuner(name="lora", config_cls=MoRAConfig, model_cls=MoRAModel, prefix="mora_")
    with pytest.raises(ValueError, match="lower-case"):
        _register.register_tuner(name="MoRA", config_cls=MoRAConfig, model_cls=MoRAModel, prefix="mora_")
    with pytest.raises(ValueError, match="differs from MoRAModel.prefix"):
        _register.register_tuner(name="mora", config_cls=MoRAConfig, model_cls=MoRAModel, prefix="other_")


def test_transformers_load_adapter_uses_the_enum(tmp_path):
    model = get_peft_model(tiny_model("llama").eval(), MoRAConfig(r=4, init_weights=False, target_modules=["q_proj"]))
    model.save_pretrained(str(tmp_path))
    base = tiny_model("llama").eval()
    base.load_adapter(str(tmp_path), adapter_name="default")
    x = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=x).logits, model(input_ids=x).logits)
    base.delete_adapter("default")
