"""Run every ``benchmarks/bench_*.py`` in its own subprocess, then re-render ``benchmarks/RESULTS.md``.

    python benchmarks/run_all.py            # real measurements into benchmarks/results/, then RESULTS.md
    python benchmarks/run_all.py --smoke    # seconds per script, results in a temp dir, RESULTS.md untouched

Exits 1 when any script fails or runs past ``--timeout``; the others still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import RESULTS_DIR  # noqa: E402

__all__ = ["discover", "main", "run_script"]


def discover(only: str | None = None) -> list[Path]:
    """The ``bench_*.py`` scripts beside this file, sorted; ``only`` keeps names containing that substring."""
    scripts = sorted(HERE.glob("bench_*.py"))
    return [s for s in scripts if only is None or only in s.stem]


def run_script(script: Path, *, smoke: bool, out: Path, threads: int, timeout: float) -> tuple[bool, float, str]:
    """Run one benchmark; returns (succeeded, seconds, last lines of its output)."""
    cmd = [sys.executable, str(script), "--out", str(out), "--threads", str(threads)] + (["--smoke"] if smoke else [])
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return proc.returncode == 0, time.perf_counter() - start, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; results to a temp dir; RESULTS.md untouched")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"result folder (default {RESULTS_DIR}; smoke: temp dir)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per benchmark (default 1)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per script (default 120 smoke, 900 full)")
    parser.add_argument("--only", default=None, help="run only scripts whose name contains this string")
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="hf_effi_bench_smoke_")) if args.smoke else RESULTS_DIR)
    timeout = args.timeout or (120.0 if args.smoke else 900.0)
    scripts = discover(args.only)
    if not scripts:
        parser.error(f"--only={args.only!r} matches no bench_*.py script; available: {[s.stem for s in discover()]}")
    failed = []
    for script in scripts:
        ok, seconds, tail = run_script(script, smoke=args.smoke, out=out, threads=args.threads, timeout=timeout)
        print(f"{'ok  ' if ok else 'FAIL'} {script.name:45s} {seconds:7.1f} s", flush=True)
        if not ok:
            failed.append(script.name)
            print("     " + tail.replace("\n", "\n     "), flush=True)
    print(f"results in {out}")
    if not args.smoke:
        from render_results import main as render_main

        # the committed RESULTS.md only ever comes from the committed results folder
        target = RESULTS_DIR.parent / "RESULTS.md" if out.resolve() == RESULTS_DIR.resolve() else out / "RESULTS.md"
        print(f"rendered {render_main(['--results', str(out), '--output', str(target)])}")
    if failed:
        print(f"{len(failed)} of {len(scripts)} benchmarks failed: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
