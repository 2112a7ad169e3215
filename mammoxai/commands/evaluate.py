"""``mammoxai evaluate``: score every configured explainer on phantoms (and CBIS-DDSM); tables + plot.

The measuring itself lives in :mod:`mammoxai.evaluate`; this module turns it into files and a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from ..config import Settings

HELP = "score every configured explainer on phantoms (quality + time)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phantoms", type=int, default=20)
    p.add_argument("--cbis-root", type=Path)
    p.add_argument("--explainers", help="comma-separated names (default: settings)")
    p.add_argument("--out", type=Path, default=Path("mammoxai-evaluate"))


def load_for_measuring(settings: Settings, names: str | None) -> tuple[Any, list[Any], Settings]:
    """The classifier, every explainer asked for (``names``, comma-separated; default: the settings'),
    and a copy of the settings; sanity exclusion is off, since measuring commands run every method asked for."""
    from ..models import load_classifier
    from ..pipeline import build_explainers

    settings = copy.deepcopy(settings)
    if names:
        settings.explainers.enabled = [n.strip() for n in names.split(",") if n.strip()]
    settings.explainers.sanity = "off"
    classifier = load_classifier(settings.model.checkpoint, device=settings.model.device,
                                 architecture=settings.model.architecture)
    return classifier, build_explainers(settings, classifier), settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Write ``scores.csv``, ``summary.csv``/``.md``/``.png`` and ``failures.json`` under ``--out``."""
    from ..evaluate import (EvaluateError, cbis_samples, evaluate_samples, markdown_table, phantom_samples,
                            plot_summary, summarise_rows, write_csv)

    if args.phantoms < 0:
        raise EvaluateError(f"--phantoms must be >= 0, got {args.phantoms}")
    classifier, explainers, settings = load_for_measuring(settings, args.explainers)
    samples = phantom_samples(classifier, args.phantoms)
    if args.cbis_root is not None:
        samples += cbis_samples(classifier, Path(args.cbis_root), max(args.phantoms, 1))
    if not samples:
        raise EvaluateError("nothing to evaluate: --phantoms 0 and no --cbis-root")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, failures = evaluate_samples(classifier, explainers, samples, target_mode=settings.explainers.target,
                                      batch_images=settings.node.batch_images,
                                      batch_size=settings.explainers.batch_size)
    summary = summarise_rows(rows)
    write_csv(rows, out / "scores.csv")
    write_csv(summary, out / "summary.csv")
    header = (f"# Explanation quality: {classifier.metadata.architecture} "
              f"({classifier.checkpoint_path.name}, sha256 {classifier.checkpoint_sha256[:12]}), "
              f"device {classifier.device}, target = {settings.explainers.target} class\n\n")
    (out / "summary.md").write_text(header + markdown_table(summary, failures))
    if summary:
        plot_summary(summary, out / "summary.png")
    (out / "failures.json").write_text(json.dumps(failures, indent=2))
    print(markdown_table(summary, failures))
    print(f"{len(samples)} images × {len(explainers)} methods in {time.perf_counter() - start:.1f} s; "
          f"tables and plot in {out}")
    return 0 if summary else 1
