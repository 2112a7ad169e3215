"""``mammoxai`` command line: serve | explain | send | echo | jobs | train | validate | evaluate | sanity | bench.

Each subcommand's work lives in the layer that owns it; this module only parses
arguments, loads settings and turns expected failures into one-line errors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import MammoxaiError

#: subcommand -> "module:function"; the function takes (args, settings) and returns an exit code.
_HANDLERS: dict[str, str] = {
    "serve": "mammoxai.node.server:main_serve",
    "explain": "mammoxai.pipeline:main_explain",
    "send": "mammoxai.node.scu:main_send",
    "echo": "mammoxai.node.scu:main_echo",
    "jobs": "mammoxai.node.jobs_cli:main_jobs",
    "train": "mammoxai.models.training:main_train",
    "validate": "mammoxai.models.training:main_validate",
    "evaluate": "mammoxai.evaluate:main_evaluate",
    "sanity": "mammoxai.evaluate:main_sanity",
    "bench": "mammoxai.evaluate:main_bench",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammoxai",
        description="Explainable AI for mammography, as a DICOM node. Demo models: synthetic data, not for clinical use.")
    parser.add_argument("--version", action="version", version=f"mammoxai {__version__}")
    parser.add_argument("--config", type=Path, help="settings TOML file (MAMMOXAI_* environment variables override it)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", help="run the DICOM node: C-STORE SCP, job queue, workers, results back to the PACS")
    p.add_argument("--port", type=int, help="override node.port")
    p.add_argument("--ae-title", help="override node.ae_title")
    p.add_argument("--once", action="store_true", help="process what is queued, then exit (no SCP)")

    p = sub.add_parser("explain", help="classify and explain DICOM or PNG files offline")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--explainers", help="comma-separated explainer names (default: the settings' profile)")
    p.add_argument("--out", type=Path, default=Path("mammoxai-explain"), help="output folder")
    p.add_argument("--dicom", action="store_true", help="also write the DICOM results (SC/SR/SEG/GSPS) for DICOM input")
    p.add_argument("--checkpoint", type=Path, help="override model.checkpoint")
    p.add_argument("--device", help="override model.device")

    p = sub.add_parser("send", help="C-STORE files or folders to a DICOM node")
    p.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")
    p.add_argument("--to", required=True, metavar="AE@HOST:PORT")
    p.add_argument("--calling-ae", default=None, help="our AE title (default: node.ae_title)")

    p = sub.add_parser("echo", help="C-ECHO a DICOM node (default: the configured destination)")
    p.add_argument("--to", metavar="AE@HOST:PORT")

    p = sub.add_parser("jobs", help="list jobs; re-send failed ones")
    p.add_argument("action", nargs="?", choices=["list", "failed", "retry", "show"], default="list")
    p.add_argument("job_ids", nargs="*", type=int)
    p.add_argument("--all-failed", action="store_true", help="with retry: every failed/dead job")

    p = sub.add_parser("train", help="train a classifier on phantoms or a CBIS-DDSM download")
    p.add_argument("--architecture", default="resnet10t", help="timm architecture name")
    p.add_argument("--data", choices=["phantoms", "cbis-ddsm"], default="phantoms")
    p.add_argument("--cbis-root", type=Path, help="CBIS-DDSM folder (CSV files + DICOM tree)")
    p.add_argument("--train-size", type=int, default=2000, help="phantoms to train on")
    p.add_argument("--val-size", type=int, default=400, help="held-out phantoms")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-kwargs", default="{}", help="JSON of extra timm.create_model keyword arguments")
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt); metadata goes beside it (.json)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("validate", help="AUC of a checkpoint on held-out phantoms (default: the demo model)")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--phantoms", type=int, default=400)
    p.add_argument("--seed", type=int, default=10_000_000, help="first held-out phantom seed")

    p = sub.add_parser("evaluate", help="score every configured explainer on phantoms (quality + time)")
    p.add_argument("--phantoms", type=int, default=20)
    p.add_argument("--cbis-root", type=Path)
    p.add_argument("--explainers", help="comma-separated names (default: settings)")
    p.add_argument("--out", type=Path, default=Path("mammoxai-evaluate"))

    p = sub.add_parser("sanity", help="model-parameter-randomisation check (Adebayo et al. 2018) per explainer")
    p.add_argument("--explainers", help="comma-separated names, or 'all' (default: settings)")
    p.add_argument("--phantoms", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2, help="randomisation seeds per phantom")
    p.add_argument("--randomise", help="comma-separated module names (default: the upper half of the network)")
    p.add_argument("--write", action="store_true", help="store the verdicts in the checkpoint's metadata")

    p = sub.add_parser("bench", help="run a benchmark from benchmarks/ (see BENCHMARKS.md)")
    p.add_argument("name", help="benchmark name, e.g. explainers")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _resolve(spec: str) -> Callable[..., int]:
    module_name, function_name = spec.split(":")
    return getattr(importlib.import_module(module_name), function_name)


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
        return int(_resolve(_HANDLERS[args.command])(args, settings) or 0)
    except MammoxaiError as exc:
        if args.debug:
            raise
        print(f"mammoxai {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
