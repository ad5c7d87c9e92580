"""Adapters of every tuner hf_effi registers load in a fresh interpreter after ``import hf_effi``, with identical
logits; without the import, peft's error names the fix. One subprocess covers all tuners (new tuners are picked
up automatically from ``hf_effi.peft.registered_tuners()``)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import get_peft_model

import hf_effi
from hf_effi.testing import tiny_model

# Small settings that fit the tiny models; a tuner not listed here gets its defaults (+ init_weights=False).
SMALL = {
    "mora": dict(r=4, target_modules=["q_proj", "v_proj"]),
    "pmss": dict(r=16, target_modules=["q_proj", "v_proj"]),
    "svfit": dict(r=8, target_modules=["q_proj", "v_proj"]),
    "sora": dict(r=4, target_modules=["q_proj", "v_proj"]),
    "sltrain": dict(r=4, density=0.05, target_modules=["q_proj", "v_proj"]),
    "s2ft": dict(head_ratio=0.25, channel_ratio=0.05, target_modules=["v_proj", "o_proj", "up_proj", "down_proj"]),
}
X = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(3))

CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    root, names = sys.argv[1], json.loads(sys.argv[2])
    report = {}
    # 1. before `import hf_effi`: peft cannot resolve the type; its error must name the fix
    bare = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    try:
        PeftModel.from_pretrained(bare, f"{root}/{names[0]}")
        report["error"] = None
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    # 2. after it: every adapter loads and reproduces the saved logits
    import hf_effi
    from hf_effi.testing import tiny_model

    for name in names:
        model = PeftModel.from_pretrained(tiny_model("llama").eval(), f"{root}/{name}")
        saved = torch.load(f"{root}/{name}/logits.pt")
        with torch.no_grad():
            out = model(input_ids=saved["x"]).logits
        report[name] = float((out - saved["logits"]).abs().max())
    print("REPORT" + json.dumps(report))
    """
)


def _small_config(config_cls, name):
    kwargs = dict(SMALL.get(name, {}))
    if "init_weights" in {f.name for f in dataclasses.fields(config_cls)}:
        kwargs["init_weights"] = False
    return config_cls(**kwargs)


@pytest.mark.slow  # one interpreter start (~10 s on a busy 2-core machine)
def test_adapters_load_in_a_fresh_process(tmp_path):
    names = list(hf_effi.peft.registered_tuners())
    assert {"mora", "pmss", "svfit"} <= set(names)
    for name, (config_cls, _) in hf_effi.peft.registered_tuners().items():
        torch.manual_seed(0)
        model = get_peft_model(tiny_model("llama").eval(), _small_config(config_cls, name))
        with torch.no_grad():
            logits = model(input_ids=X).logits
        model.save_pretrained(str(tmp_path / name))
        torch.save({"x": X, "logits": logits}, tmp_path / name / "logits.pt")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    report = json.loads(lines[-1].removeprefix("REPORT"))
    assert report["error"] is not None and "import hf_effi" in report["error"], report["error"]
    assert report["error"].startswith("KeyError"), report["error"]
    for name in names:
        assert report[name] == 0.0, (name, report[name])
