"""Subspace optimizers vs AdamW on the real SmolLM2-135M-Instruct: state bytes per parameter and step-time ratios.

The same measurement as ``bench_optim_subspace.py`` (which uses the GaLore 60M shape), on the real checkpoint
(``hf_effi.testing.load_smollm2``: 134.5M parameters, hidden 576, 30 layers, tied embeddings; rank = hidden / 4).
Smoke mode measures a tiny Llama instead, so CI never needs the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_optim_subspace  # noqa: E402


def _load():
    from hf_effi.testing import load_smollm2

    model, _ = load_smollm2()
    return model


if __name__ == "__main__":
    from hf_effi.testing import SMOLLM2_NAME

    print(
        bench_optim_subspace.main(
            name="optim_subspace_smollm2",
            load_model=_load,
            label=SMOLLM2_NAME,
            full_repeats_override=(5, 3),
            claim="Subspace optimizers on the real SmolLM2-135M-Instruct: state bytes/param and step time vs AdamW.",
        )
    )
