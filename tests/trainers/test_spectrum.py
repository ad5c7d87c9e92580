"""Spectrum: the Marchenko–Pastur SNR finds the planted rank of synthetic matrices and ranks them right, the per-type
selection unfreezes the top share, the CLI prints and writes YAML, bad input fails clearly."""

import math

import pytest
import torch
import yaml
from torch import nn

import hf_effi.trainers.spectrum_commands  # noqa: F401  (registers `hf-effi spectrum`)
from hf_effi.cli import main as cli_main
from hf_effi.testing import tiny_model
from hf_effi.trainers.spectrum import marchenko_pastur_median, matrix_snr, spectrum_freeze, spectrum_scan


def planted(n, m, rank, strength, seed, noise_sd=0.02):
    """Gaussian noise plus ``rank`` orthogonal directions of singular value ``strength`` times the noise edge."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, m, generator=g) * noise_sd
    if rank == 0:
        return noise
    u = torch.linalg.qr(torch.randn(n, rank, generator=g))[0]
    v = torch.linalg.qr(torch.randn(m, rank, generator=g))[0]
    return noise + strength * noise_sd * math.sqrt(max(n, m)) * u @ v.T


class ThreeTypes(nn.Module):
    """Two 'blocks' of q (planted rank 8 / pure noise) and up (rank 2 / rank 16), in a layers.N.type layout."""

    def __init__(self):
        super().__init__()
        weights = [{"q": planted(48, 96, 8, 6, 1), "up": planted(96, 48, 2, 6, 2)},
                   {"q": planted(48, 96, 0, 0, 3), "up": planted(96, 48, 16, 6, 4)}]
        self.layers = nn.ModuleList()
        for w in weights:
            block = nn.Module()
            for key, value in w.items():
                lin = nn.Linear(value.shape[1], value.shape[0], bias=False)
                lin.weight.data.copy_(value)
                setattr(block, key, lin)
            self.layers.append(block)


@pytest.mark.parametrize("n,m,rank", [(64, 128, 0), (64, 128, 3), (128, 64, 7), (96, 96, 5)])
def test_signal_rank_is_the_planted_rank(n, m, rank):
    snr, found = matrix_snr(planted(n, m, rank, strength=4, seed=rank))
    assert found <= 1 if rank == 0 else found == rank  # pure noise: at most an edge fluctuation
    assert snr >= 0


def test_snr_ranks_known_ranks_and_ignores_scale_and_transpose():
    ranks = [0, 2, 8, 16]
    snrs = [matrix_snr(planted(64, 128, r, strength=4, seed=10 + r))[0] for r in ranks]
    assert snrs == sorted(snrs) and snrs[0] < snrs[1]
    w = planted(64, 128, 4, strength=4, seed=0)
    assert matrix_snr(5 * w)[0] == pytest.approx(matrix_snr(w)[0], rel=1e-9)
    assert matrix_snr(w.T)[0] == pytest.approx(matrix_snr(w)[0], rel=1e-9)


def test_reference_iqr_rule_would_rank_noise_first():
    """Why the docstring departs from the reference script: its IQR/1.349 noise level and S_max normalisation rank a
    pure-noise matrix above a clearly low-rank one; ours does not."""

    def reference_style(w):
        s = torch.linalg.svdvals(w.double())
        q1, q3 = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype))
        threshold = (q3 - q1) / 1.349 * (1 + math.sqrt(min(w.shape) / max(w.shape)))
        return float(s[s > threshold].sum() / s[s <= threshold].sum() / s.max())

    noise, signal = planted(64, 128, 0, 0, 1), planted(64, 128, 4, 20, 2)
    assert reference_style(noise) > reference_style(signal)
    assert matrix_snr(noise)[0] < matrix_snr(signal)[0]


def test_marchenko_pastur_median_closed_form():
    # beta = 1: the median t^2 * 4 solves t*sqrt(1-t^2) + asin(t) = pi/4 (t = 0.40397...).
    assert marchenko_pastur_median(1.0) == pytest.approx(0.65277, abs=2e-4)
    with pytest.raises(ValueError, match="beta"):
        marchenko_pastur_median(1.5)


def test_scan_and_freeze_select_top_per_type():
    model = ThreeTypes()
    scan = spectrum_scan(model)
    assert [e.snr for e in scan] == sorted((e.snr for e in scan), reverse=True)
    assert {e.name: e.module_type for e in scan}["layers.1.up"] == "up"
    selection = spectrum_freeze(model, top_percent=50, scan=scan)
    assert selection["unfrozen_modules"] == ["layers.0.q", "layers.1.up"]  # rank 8 beats noise, 16 beats 2
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["layers.0.q.weight", "layers.1.up.weight"]
    assert selection["unfrozen_parameters"] == [r"^layers\.0\.q\.weight$", r"^layers\.1\.up\.weight$"]


def test_freeze_on_a_transformer_keeps_embeddings_and_trains(tmp_path):
    model = tiny_model("llama", vocab_size=64, num_hidden_layers=4)
    scan = spectrum_scan(model)
    assert len(scan) == 4 * 7 and all(e.module_type in {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                        "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                        "mlp.down_proj"} for e in scan)
    selection = spectrum_freeze(model, top_percent=25, scan=scan)
    assert len(selection["unfrozen_modules"]) == 7  # one of four per type
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= trainable
    assert not any("norm" in n for n in trainable)


def test_cli_prints_ranking_and_writes_yaml(tmp_path, capsys):
    tiny_model("llama", vocab_size=64, num_hidden_layers=2).save_pretrained(tmp_path / "m")
    out = tmp_path / "sel.yaml"
    assert cli_main(["spectrum", str(tmp_path / "m"), "--top-percent", "50", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in printed and "selected 7 of 14" in printed
    saved = yaml.safe_load(out.read_text())
    assert saved["top_percent"] == 50 and len(saved["unfrozen_modules"]) == 7 and len(saved["snr"]) == 14
    assert r"^model\.embed_tokens\.weight$" in saved["unfrozen_parameters"]
    assert cli_main(["spectrum", str(tmp_path / "nothing")]) == 1
    assert "has no config.json" in capsys.readouterr().err


def test_bad_input():
    with pytest.raises(ValueError, match="has no nn.Linear"):
        spectrum_scan(nn.Sequential(nn.Conv1d(2, 2, 1)))
    model = ThreeTypes()
    for bad in (0, 101, "25"):
        with pytest.raises(ValueError, match="top_percent"):
            spectrum_freeze(model, top_percent=bad)
    assert all(p.requires_grad for p in model.parameters())  # nothing half-applied
    with pytest.raises(ValueError, match="module_types"):
        spectrum_scan(model, module_types=["q_proj"])
    with pytest.raises(ValueError, match="2-D"):
        matrix_snr(torch.ones(3))
