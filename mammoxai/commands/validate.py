"""``mammoxai validate``: AUC of a checkpoint on held-out phantoms (default: the settings' / demo model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Settings

HELP = "AUC of a checkpoint on held-out phantoms (default: the demo model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--phantoms", type=int, default=400)
    p.add_argument("--seed", type=int, default=10_000_000, help="first held-out phantom seed")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the AUC and accuracy at 0.5 on ``--phantoms`` held-out phantoms, refusing training seeds, and the
    expected calibration error before/after the checkpoint's calibration temperature (domain record)."""
    from ..models import load_classifier
    from ..models.training import check_disjoint, validate_on_phantoms, validation_seeds
    from ..models.domain import ECE_BINS, DomainRecord, calibration_on_phantoms

    checkpoint = args.checkpoint if args.checkpoint is not None else settings.model.checkpoint
    classifier = load_classifier(checkpoint, device=settings.model.device, architecture=settings.model.architecture)
    held_out = validation_seeds(args.phantoms, args.seed)
    seeds = classifier.metadata.training.get("train_seeds")
    if seeds:
        check_disjoint(range(int(seeds[0]), int(seeds[1])), held_out)
    auc, accuracy = validate_on_phantoms(classifier, args.phantoms, args.seed, progress=True)
    print(f"AUC on {args.phantoms} held-out phantoms: {auc:.3f} (accuracy at 0.5: {accuracy:.3f}; "
          f"seeds {held_out.start}..{held_out.stop - 1}; {classifier.checkpoint_path.name})")
    record = DomainRecord.from_metadata(classifier.metadata)
    if record is None or not record.temperature:
        print("probabilities not calibrated (the checkpoint has no domain record with a temperature: "
              "mammoxai domain --write)")
    else:
        if record.data.get("held_out_seeds"):
            check_disjoint(range(*record.data["held_out_seeds"]), held_out)
        c = calibration_on_phantoms(classifier, record, held_out)
        print(f"expected calibration error ({ECE_BINS} bins) on the same phantoms: {c['ece_before']:.4f} "
              f"uncalibrated, {c['ece_after']:.4f} with the record's temperature {c['temperature']:.3f}")
    return 0
