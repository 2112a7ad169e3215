#!/usr/bin/env python
"""Train the two bundled demo models on synthetic phantoms (fixed seeds; CPU is enough).

* ``mammoxai/models/demo/demo_cnn.pt`` (+ ``.json``): a narrow ``resnet10t`` (timm), 1 channel,
  input 256 x 208 - the default model; Grad-CAM / LRP friendly.
* ``mammoxai/models/demo/demo_vit.pt`` (+ ``.json``): ``vit_tiny_patch16_224`` with 4 blocks, average-pooled
  patch tokens (14 x 12, plus the class token), 1 channel, input 224 x 192 - for the attention explainers.

Training phantoms: seeds ``0 .. N-1`` (``mammoxai.models.training.training_seeds``), generated
at 512 x 416 (all phantom sizes are relative, so this only sets the cost). Held-out phantoms:
seeds ``10_000_000 ..`` (``mammoxai validate``'s default), never trained on. Every random
source is seeded; re-running gives the same models up to CPU floating-point non-determinism.

Status (2026-11-23): the CNN reaches AUC 0.9998 on the 400 held-out phantoms (6 epochs). The ViT
does NOT learn well from scratch here: AUC 0.56-0.65 after 3-20 epochs with lr 1e-3 / 3e-4 / 1e-4,
class-token or average pooling, or a hybrid conv stem. The shipped demo_vit.pt (this configuration,
20 epochs) is good for exercising the attention explainers, not as a classifier.

Usage: ``python scripts/train_demo_models.py [--only cnn|vit] [--cache DIR]`` (``make demo-models``).
The demo models are trained on synthetic data only: not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mammoxai.models.classifier import DEMO_INTENDED_USE, demo_checkpoint, load_classifier
from mammoxai.models.phantoms import generate_phantom
from mammoxai.models.preprocess import preprocess_array
from mammoxai.models.training import (
    TRAIN_PHANTOM_SHAPE, ArrayDataset, check_disjoint, train_classifier, training_seeds, validate_on_phantoms,
    validation_seeds,
)

CNN = {
    "architecture": "resnet10t",
    "model_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16},
    "input_size": (256, 208),
    "epochs": 6, "lr": 2e-3, "batch_size": 32, "weight_decay": 0.05,
    "description": "mammoxai demo CNN (narrow resnet10t, 1 channel, 256x208)",
    # layer4's grid (8 x 7 at 256 x 208) is too coarse for small lesions: Grad-CAM's peak lands inside the
    # lesion for 10/30 malignant phantoms there, 27/30 on layer3 (16 x 13). CAM itself needs the head's layer.
    "explainer_params": {m: {"target_layer": "layer3"} for m in (
        "gradcam", "gradcam_pp", "hirescam", "xgradcam", "layercam", "scorecam", "eigencam", "guided_gradcam")},
}
VIT = {
    # plain ViT-tiny, 4 blocks, 14 x 12 patch tokens + a class token; the head reads the average of the
    # patch tokens (global_pool="avg"). From scratch on 1600 phantoms it stays weak (see the status above).
    "architecture": "vit_tiny_patch16_224",
    "model_kwargs": {"img_size": [224, 192], "depth": 4, "global_pool": "avg"},
    "input_size": (224, 192),
    "epochs": 20, "lr": 1e-4, "batch_size": 32, "weight_decay": 0.05,
    "description": "mammoxai demo ViT (vit_tiny_patch16_224, 4 blocks, average-pooled tokens, 1 channel, 224x192)",
}
VERSION = "1.0.0"
SEED = 0


def phantom_arrays_multi(seeds: range, sizes: list[tuple[int, int]], cache: Path | None, tag: str) -> dict:
    """Generate each phantom once and preprocess it for every input size; optionally cached as .npz."""
    name = f"{tag}_{seeds.start}_{seeds.stop}_{TRAIN_PHANTOM_SHAPE[0]}x{TRAIN_PHANTOM_SHAPE[1]}.npz"
    keys = [f"x{h}x{w}" for h, w in sizes]
    if cache is not None and (cache / name).is_file():
        data = np.load(cache / name)
        if all(k in data for k in keys):
            print(f"{tag}: loaded {len(seeds)} cached phantoms from {cache / name}", flush=True)
            return {**{k: data[k] for k in keys}, "y": data["y"]}
    from tqdm import tqdm

    out = {k: np.empty((len(seeds), h, w), dtype=np.float16) for k, (h, w) in zip(keys, sizes)}
    y = np.empty(len(seeds), dtype=np.int64)
    for i, s in enumerate(tqdm(seeds, desc=f"{tag} phantoms", mininterval=5.0)):
        ph = generate_phantom(s, shape=TRAIN_PHANTOM_SHAPE)
        for k, size in zip(keys, sizes):
            out[k][i] = preprocess_array(ph.image, ph.laterality, size)[0]
        y[i] = ph.label
    out["y"] = y
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache / name, **out)
    return out


def train_one(kind: str, cfg: dict, train: dict, val: dict, report: dict, full_size_check: int = 100,
              out_dir: Path | None = None) -> None:
    h, w = cfg["input_size"]
    key = f"x{h}x{w}"
    out = demo_checkpoint(kind) if out_dir is None else out_dir / demo_checkpoint(kind).name
    t0 = time.perf_counter()
    result = train_classifier(
        ArrayDataset(train[key], train["y"]), ArrayDataset(val[key], val["y"]),
        architecture=cfg["architecture"], out=out, input_size=cfg["input_size"], epochs=cfg["epochs"],
        batch_size=cfg["batch_size"], lr=cfg["lr"], weight_decay=cfg["weight_decay"], seed=SEED,
        model_kwargs=cfg["model_kwargs"], device="cpu", description=cfg["description"],
        explainer_params=cfg.get("explainer_params"),
        intended_use=DEMO_INTENDED_USE, version=VERSION, half=False,
        trained_on=f"{len(train['y'])} synthetic phantoms (mammoxai.models.phantoms, seeds "
                   f"{report['train_seeds'][0]}..{report['train_seeds'][1] - 1}, {TRAIN_PHANTOM_SHAPE[0]}x"
                   f"{TRAIN_PHANTOM_SHAPE[1]})",
        extra_training={"data": "phantoms", "train_seeds": report["train_seeds"], "val_seeds": report["val_seeds"],
                        "phantom_shape": list(TRAIN_PHANTOM_SHAPE), "script": "scripts/train_demo_models.py"},
        progress=True)
    train_s = time.perf_counter() - t0
    clf = load_classifier(out, device="cpu")
    t1 = time.perf_counter()
    auc_full, acc_full = validate_on_phantoms(clf, full_size_check, validation_seeds(1).start, shape=(1024, 832))
    report[kind] = {"checkpoint": str(out), "bytes": out.stat().st_size, "val_auc_400": result.val_auc,
                    "train_seconds": round(train_s, 1), "history": result.history,
                    f"auc_{full_size_check}_full_size_1024x832": round(auc_full, 4),
                    f"acc_{full_size_check}_full_size_1024x832": round(acc_full, 4),
                    "full_size_check_seconds": round(time.perf_counter() - t1, 1)}
    print(f"{kind}: AUC {result.val_auc:.4f} on {len(val['y'])} held-out phantoms, trained in {train_s:.0f} s; "
          f"full-size (1024x832) check: AUC {auc_full:.4f} on {full_size_check}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["cnn", "vit"], help="train one model only")
    parser.add_argument("--train-size", type=int, default=1600)
    parser.add_argument("--val-size", type=int, default=400)
    parser.add_argument("--cache", type=Path, help="folder to cache the preprocessed phantoms in")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-size-check", type=int, default=100,
                        help="also check each model on this many held-out phantoms at the default 1024x832")
    parser.add_argument("--out-dir", type=Path, help="write the checkpoints here instead of mammoxai/models/demo")
    parser.add_argument("--vit-lr", type=float, default=VIT["lr"])
    parser.add_argument("--cnn-epochs", type=int, default=CNN["epochs"])
    parser.add_argument("--vit-epochs", type=int, default=VIT["epochs"])
    args = parser.parse_args(argv)
    CNN["epochs"], VIT["epochs"], VIT["lr"] = args.cnn_epochs, args.vit_epochs, args.vit_lr
    torch.set_num_threads(args.threads)
    kinds = [args.only] if args.only else ["cnn", "vit"]
    configs = {"cnn": CNN, "vit": VIT}
    sizes = sorted({tuple(configs[k]["input_size"]) for k in kinds})
    train_range, val_range = training_seeds(args.train_size, SEED), validation_seeds(args.val_size)
    check_disjoint(train_range, val_range)
    report: dict = {"train_seeds": [train_range.start, train_range.stop], "val_seeds": [val_range.start, val_range.stop]}
    t0 = time.perf_counter()
    val = phantom_arrays_multi(val_range, sizes, args.cache, "val")
    train = phantom_arrays_multi(train_range, sizes, args.cache, "train")
    report["phantom_seconds"] = round(time.perf_counter() - t0, 1)
    for kind in kinds:
        train_one(kind, configs[kind], train, val, report, args.full_size_check, args.out_dir)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
