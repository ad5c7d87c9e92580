"""The ``hf-effi`` console script.

Each family adds its subcommands with one explicit :func:`register_command` call at import time (e.g. a
``hf-effi spectrum MODEL_DIR`` registered by the module that implements Spectrum); :func:`main` builds the
``argparse`` parser from everything registered once ``hf_effi`` is imported. Two commands ship here:

- ``hf-effi available [--json] [--family NAME]``: what can be asked for by name (optimizers, schedules, ...).
- ``hf-effi card OUTPUT_DIR --method NAME --metric name=value[:unit] ...``: write a model card for a checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

_LAZY_COMMAND_MODULES = ("hf_effi.trainers.spectrum_commands",)

__all__ = ["Command", "build_parser", "main", "register_command", "registered_commands"]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``configure`` adds its arguments to a subparser, ``run`` executes it and returns an exit code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, Command] = {}


def register_command(
    name: str,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> Command:
    """Add ``hf-effi <name>``. ``run`` returns the exit code; ``ValueError``/``TypeError`` it raises are shown as
    one-line errors (exit code 1), anything else as a traceback."""
    if not isinstance(name, str) or not name or name != name.strip().lower() or " " in name:
        raise ValueError(f"command name must be lower-case without spaces, got {name!r}; e.g. 'spectrum'")
    for arg, fn in (("configure", configure), ("run", run)):
        if not callable(fn):
            raise TypeError(f"{arg} for command {name!r} must be callable, got {type(fn).__name__}")
    if name in _COMMANDS:
        raise ValueError(f"command {name!r} is already registered (run={_COMMANDS[name].run!r}); pick another name")
    _COMMANDS[name] = Command(name, help, configure, run)
    return _COMMANDS[name]


def registered_commands() -> dict[str, Command]:
    """A copy of the registered subcommands, by name."""
    return dict(_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-effi`` parser with one subparser per registered command (sorted by name)."""
    from hf_effi import __version__

    parser = argparse.ArgumentParser(prog="hf-effi", description="Cheaper training for Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"hf_effi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in sorted(_COMMANDS):
        command = _COMMANDS[name]
        command_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.configure(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-effi`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    import hf_effi  # noqa: F401  (importing the package lets every family register its commands)

    for module in _LAZY_COMMAND_MODULES:  # families kept out of `import hf_effi` because they import Trainer
        importlib.import_module(module)

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(_COMMANDS[args.command].run(args))
    except (ValueError, TypeError) as err:
        print(f"hf-effi {args.command}: error: {err}", file=sys.stderr)
        return 1


# --- hf-effi available ---------------------------------------------------------------------------------------------


def _configure_available(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--family", default=None, help="only this family (e.g. optimizers, schedules)")


def _rows(found: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for family, entries in found.items():
        items = entries.items() if isinstance(entries, Mapping) else ((str(e), "") for e in entries)
        rows += [(str(family), str(name), " ".join(str(desc).split())) for name, desc in items]
    return rows


def _run_available(args: argparse.Namespace) -> int:
    import hf_effi

    found = hf_effi.available()
    if args.family is not None:
        if args.family not in found:
            raise ValueError(f"--family {args.family!r} is unknown; valid families: {', '.join(sorted(found))}")
        found = {args.family: found[args.family]}
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return 0
    rows = [("FAMILY", "NAME", "DESCRIPTION"), *_rows(found)]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for family, name, desc in rows:
        print(f"{family:<{widths[0]}}  {name:<{widths[1]}}  {desc}".rstrip())
    return 0


# --- hf-effi card --------------------------------------------------------------------------------------------------


def _key_value(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{option} {text!r} must look like NAME=VALUE, e.g. {option} lr=0.001")
    return key.strip(), value.strip()


def _scalar(text: str) -> Any:
    """A command-line value as YAML reads it: 0.001 -> float, 12 -> int, [a, b] -> list, anything else -> str."""
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def _metric(text: str) -> tuple[str, float | int | tuple[float | int, str]]:
    name, raw = _key_value(text, "--metric")
    number, _, unit = raw.partition(":")
    value = _scalar(number.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"--metric {text!r}: {number.strip()!r} is not a number; write NAME=VALUE[:UNIT], e.g. "
                         "--metric eval_loss=3.21 or --metric step_time=0.12:s")
    return name, ((value, unit.strip()) if unit.strip() else value)


def _configure_card(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="the saved checkpoint folder; README.md is written there")
    parser.add_argument("--method", required=True, help="what made the weights (optimizer, tuner, ...)")
    parser.add_argument("--summary", default=None, help="one or two sentences opening the card")
    parser.add_argument("--base-model", default=None, help="Hub id or path of the starting model")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=VALUE", help="e.g. tokens=1048576")
    parser.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE[:UNIT]",
                        help="a measured value, repeatable, e.g. --metric step_time=0.12:s")
    parser.add_argument("--tag", action="append", default=[], help="extra Hub tag, repeatable")
    parser.add_argument("--template", default="default", help="card template name or path to a .md template")


def _run_card(args: argparse.Namespace) -> int:
    from hf_effi.cards import write_model_card

    path = write_model_card(
        args.output_dir,
        base_model=args.base_model,
        method=args.method,
        summary=args.summary or f"Weights made with {args.method} through hf_effi.",
        settings={k: _scalar(v) for k, v in (_key_value(s, "--setting") for s in args.setting)},
        data={k: _scalar(v) for k, v in (_key_value(s, "--data") for s in args.data)},
        metrics=dict(_metric(m) for m in args.metric),
        tags=args.tag,
        template=args.template,
    )
    print(path)
    return 0


register_command("available", "list the optimizers, schedules and other methods hf_effi provides by name",
                 _configure_available, _run_available)
register_command("card", "write a model card (README.md with Hub metadata) for a saved checkpoint",
                 _configure_card, _run_card)
