"""``hf-effi spectrum MODEL_DIR [--top-percent 25] [--output selection.yaml]``: print a checkpoint's Spectrum
ranking (SNR per weight matrix) and write the selection as YAML.

The YAML holds ``unfrozen_parameters`` (anchored regexes, the key Axolotl reads), ``unfrozen_modules`` and the SNR
of every scanned matrix, so the choice can be checked and re-used without repeating the SVDs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from hf_effi.cli import register_command

__all__ = ["run_spectrum"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a saved transformers checkpoint folder (config.json + weights)")
    parser.add_argument("--top-percent", type=float, default=25.0,
                        help="share of each module type to unfreeze, in (0, 100] (default 25; the paper: 25 or 50)")
    parser.add_argument("--output", default=None,
                        help="where to write the selection YAML (default: MODEL_DIR/spectrum_<top>.yaml)")
    parser.add_argument("--no-embeddings", action="store_true",
                        help="leave the embeddings and LM head frozen (Spectrum trains them by default)")


def run_spectrum(args: argparse.Namespace) -> int:
    """Scan, print the ranking, write the YAML; returns the exit code."""
    from transformers import AutoModelForCausalLM

    from hf_effi.trainers.spectrum import spectrum_freeze, spectrum_scan

    folder = Path(args.model_dir)
    if not (folder / "config.json").is_file():
        raise ValueError(f"MODEL_DIR {str(folder)!r} has no config.json; pass a folder written by save_pretrained")
    if not 0 < args.top_percent <= 100:
        raise ValueError(f"--top-percent {args.top_percent} must be in (0, 100], e.g. 25 or 50")
    model = AutoModelForCausalLM.from_pretrained(folder)
    scan = spectrum_scan(model)
    selection = spectrum_freeze(model, args.top_percent, scan=scan, train_embeddings=not args.no_embeddings)
    chosen = set(selection["unfrozen_modules"])
    width = max(len(e.name) for e in scan)
    print(f"{'MODULE':<{width}}  {'TYPE':<20}  {'SNR':>10}  {'RANK>MP':>7}  SELECTED")
    for e in scan:
        print(f"{e.name:<{width}}  {e.module_type:<20}  {e.snr:>10.4f}  {e.signal_rank:>7}  "
              f"{'yes' if e.name in chosen else ''}")
    top = f"{args.top_percent:g}"
    out = Path(args.output) if args.output else folder / f"spectrum_{top}.yaml"
    payload = {
        "model": str(folder),
        "top_percent": args.top_percent,
        "unfrozen_parameters": selection["unfrozen_parameters"],
        "unfrozen_modules": selection["unfrozen_modules"],
        "snr": {e.name: float(e.snr) for e in scan},
    }
    out.write_text(yaml.safe_dump(payload, sort_keys=False))
    print(f"selected {len(chosen)} of {len(scan)} matrices; wrote {out}")
    return 0


register_command("spectrum", "rank a checkpoint's weight matrices by SNR (Spectrum) and write the selection as YAML",
                 _configure, run_spectrum)
