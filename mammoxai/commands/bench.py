"""``mammoxai bench NAME [ARGS...]``: run ``benchmarks/bench_NAME.py ARGS...`` with this Python (see BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ..config import Settings
from ..errors import MammoxaiError

HELP = "run a benchmark from benchmarks/ (see BENCHMARKS.md)"


class BenchError(MammoxaiError):
    """No such benchmark."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="benchmark name, e.g. explainers")
    p.add_argument("rest", nargs=argparse.REMAINDER)


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` folder."""
    return Path(__file__).resolve().parents[2] / "benchmarks"


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The benchmark's exit code."""
    script = benchmarks_dir() / f"bench_{args.name}.py"
    if not script.is_file():
        known = sorted(p.stem.removeprefix("bench_") for p in benchmarks_dir().glob("bench_*.py"))
        raise BenchError(f"{script}: no such benchmark (known: {', '.join(known) or 'none'})")
    rest = [a for a in args.rest if a != "--"]
    return subprocess.call([sys.executable, str(script), *rest])
