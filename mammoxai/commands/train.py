"""``mammoxai train``: train a classifier on phantoms or a CBIS-DDSM download."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import Settings

HELP = "train a classifier on phantoms or a CBIS-DDSM download"


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def parse_model_kwargs(text: str) -> dict[str, Any]:
    """``--model-kwargs`` as a dict (lists become tuples where timm wants tuples, e.g. ``img_size``)."""
    from ..models.training import TrainingError

    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise TrainingError(f"--model-kwargs is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TrainingError("--model-kwargs must be a JSON object")
    for key in ("img_size",):
        if isinstance(value.get(key), list):
            value[key] = tuple(value[key])
    return value


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Train on phantoms or a CBIS-DDSM folder; prints the validation AUC."""
    import torch

    from ..models.classifier import DEMO_INTENDED_USE
    from ..models.training import (TRAIN_PHANTOM_SHAPE, TrainingError, check_disjoint, default_input_size,
                                   phantom_arrays, train_classifier, training_seeds, validation_seeds)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    architecture = args.architecture
    input_size = tuple(args.input_size) if args.input_size else default_input_size(architecture)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    if "vit" in architecture and "img_size" not in model_kwargs:
        model_kwargs["img_size"] = tuple(input_size)
    if args.data == "phantoms":
        train_range = training_seeds(args.train_size, args.seed)
        val_range = validation_seeds(args.val_size)
        check_disjoint(train_range, val_range)
        print(f"generating {len(train_range)} training and {len(val_range)} held-out phantoms ...", flush=True)
        train = phantom_arrays(train_range, input_size, progress=True, desc="train phantoms")
        val = phantom_arrays(val_range, input_size, progress=True, desc="held-out phantoms")
        trained_on = f"{len(train_range)} synthetic phantoms (seeds {train_range.start}..{train_range.stop - 1})"
        extra = {"data": "phantoms", "train_seeds": [train_range.start, train_range.stop],
                 "val_seeds": [val_range.start, val_range.stop], "phantom_shape": list(TRAIN_PHANTOM_SHAPE)}
        intended = DEMO_INTENDED_USE
    else:
        from ..models.cbis_ddsm import cbis_arrays

        if args.cbis_root is None:
            raise TrainingError("--data cbis-ddsm needs --cbis-root FOLDER")
        train, val, info = cbis_arrays(args.cbis_root, input_size, seed=args.seed, progress=True)
        trained_on = f"CBIS-DDSM at {args.cbis_root}: {len(train)} training images"
        extra = {"data": "cbis-ddsm", **info}
        intended = "research - not for clinical use"
    result = train_classifier(
        train, val, architecture=architecture, out=args.out, input_size=input_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, model_kwargs=model_kwargs, device=args.device,
        description=f"mammoxai {architecture} classifier", intended_use=intended, trained_on=trained_on,
        extra_training=extra)
    auc = "n/a" if result.val_auc is None else f"{result.val_auc:.3f}"
    print(f"saved {result.checkpoint} (+ {result.checkpoint.with_suffix('.json').name}); "
          f"validation AUC {auc} on {len(val)} held-out images; {result.seconds:.0f} s")
    return 0
