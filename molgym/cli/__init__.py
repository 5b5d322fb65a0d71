"""The ``molgym`` command line.

Each command group lives in its own module of this package and is listed in ``GROUPS``; a module provides
``register(subparsers)``, which adds its sub-parser and sets ``func`` on each command. Modules are imported when
the CLI starts, but they import heavy libraries (torch, MACE, tblite) only inside the command functions, so
``molgym --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import molgym

#: (module, help) of each command group, in the order ``molgym --help`` lists them.
GROUPS: list[tuple[str, str]] = [
    ("molgym.cli.potential", "inspect, evaluate, build data for and train potentials"),
    ("molgym.agents.commands.train", "train a covariant or internal actor-critic agent with PPO"),
    ("molgym.agents.commands.train_report", "learning table and curves over seeds from finished molgym train runs"),
    ("molgym.cli.generate", "generate molecules with a generator (simgen, ...)"),
    ("molgym.cli.bench", "run a benchmark suite (generators x tasks x seeds)"),
    ("molgym.cli.report", "write the Markdown/HTML report of a benchmark run"),
    ("molgym.agents.commands.diffusion", "train and analyse the energy-based diffusion model (QM9)"),
    ("molgym.cli.returns", "best-known returns of formulas; reward gaps of a learned potential against xTB"),
]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molgym",
        description="molgym: a gym for 3D molecular design (environments, potentials, generators, benchmark).",
    )
    parser.add_argument("--version", action="version", version=f"molgym {molgym.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module_name, _help in GROUPS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def split_option(item: str, expected: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``, the value read as JSON when it parses and kept as text otherwise (the
    ``--option`` flags of ``molgym bench`` and ``molgym generate``); a :class:`CLIError` naming the item and
    ``expected`` (e.g. ``"KEY=VALUE, e.g. steps=100"``) when there is no ``=`` or no key."""
    import json

    key, eq, raw = item.partition("=")
    if not eq or not key:
        raise CLIError(f"malformed --option {item!r}: expected {expected}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def duration(text: str) -> float:
    """An argparse type: seconds from ``3600``, ``90s``, ``45m`` or ``1.5h`` (positive)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 3600, 90s, 45m or 1.5h, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        # a group without a command: show that group's help (or the top-level help)
        getattr(args, "group_parser", parser).print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"molgym: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("molgym: interrupted; finished outputs were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
