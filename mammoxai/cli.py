"""``mammoxai`` command line: serve | explain | send | echo | jobs | train | validate | evaluate | sanity | bench.

This module only assembles the subcommands of :mod:`mammoxai.commands` (each
module there declares its arguments and runs its command), loads the settings
and turns expected failures into one-line errors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

from . import __version__
from .commands import COMMANDS
from .errors import MammoxaiError


def command_module(name: str) -> ModuleType:
    """The module of subcommand ``name`` (``HELP``, ``add_arguments(parser)``, ``run(args, settings)``)."""
    return importlib.import_module(f"mammoxai.commands.{COMMANDS[name]}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammoxai",
        description="Explainable AI for mammography, as a DICOM node. Demo models: synthetic data, not for clinical use.")
    parser.add_argument("--version", action="version", version=f"mammoxai {__version__}")
    parser.add_argument("--config", type=Path, help="settings TOML file (MAMMOXAI_* environment variables override it)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = command_module(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The node logs a line per job; offline commands print their own results and log warnings only.
    level = logging.DEBUG if args.debug else logging.INFO if args.command == "serve" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every copied module at INFO
    try:
        from .config import load_settings

        settings = load_settings(args.config)
        return int(command_module(args.command).run(args, settings) or 0)
    except MammoxaiError as exc:
        if args.debug:
            raise
        print(f"mammoxai {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
