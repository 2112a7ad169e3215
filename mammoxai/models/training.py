"""Train / validate a timm classifier on phantoms or on a CBIS-DDSM download.

Everything is seeded (python, numpy, torch). Images are preprocessed once
(:func:`mammoxai.models.preprocess.preprocess_array`) and cached in memory as
float16 at model resolution; training uses AdamW with a linear warm-up then a
cosine schedule, light augmentation (intensity gamma/contrast, small shifts,
noise), and reports the validation AUC. Phantom seeds: training uses
``TRAIN_SEED_BASE + seed * 1_000_000 + i``; validation uses
``VALIDATION_SEED_BASE + i`` (the ``mammoxai validate`` default), which never
overlap (:func:`check_disjoint` enforces it).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import MammoxaiError
from .classifier import DEMO_INTENDED_USE, Classifier, ModelMetadata, create_module, save_checkpoint
from .device import select_device
from .phantoms import generate_phantom
from .preprocess import preprocess_array

log = logging.getLogger(__name__)

TRAIN_SEED_BASE = 0
VALIDATION_SEED_BASE = 10_000_000
#: phantom shape used to train/validate on phantoms (sizes are relative, so it only sets the cost)
TRAIN_PHANTOM_SHAPE: tuple[int, int] = (512, 416)
DEFAULT_INPUT_SIZE: dict[str, tuple[int, int]] = {"vit": (224, 192), "swin": (224, 224)}
DEFAULT_CNN_INPUT: tuple[int, int] = (256, 208)


class TrainingError(MammoxaiError, RuntimeError):
    """Training or validation cannot proceed (bad data folder, overlapping seeds, ...)."""


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half). Needs both classes."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"roc_auc: {y.shape[0]} labels but {s.shape[0]} scores")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc: needs at least one positive and one negative label")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def default_input_size(architecture: str) -> tuple[int, int]:
    """(rows, columns) used when ``--input-size`` is not given."""
    for key, size in DEFAULT_INPUT_SIZE.items():
        if key in architecture:
            return size
    return DEFAULT_CNN_INPUT


def training_seeds(n: int, seed: int = 0) -> range:
    """Phantom seeds for training run ``seed``."""
    start = TRAIN_SEED_BASE + seed * 1_000_000
    return range(start, start + n)


def validation_seeds(n: int, start: int = VALIDATION_SEED_BASE) -> range:
    """Held-out phantom seeds (``mammoxai validate`` default)."""
    return range(start, start + n)


def check_disjoint(train: range, held_out: range) -> None:
    """Raise :class:`TrainingError` if the two seed ranges overlap."""
    if max(train.start, held_out.start) < min(train.stop, held_out.stop):
        raise TrainingError(f"held-out phantom seeds {held_out.start}..{held_out.stop - 1} overlap the training "
                            f"seeds {train.start}..{train.stop - 1}")


@dataclass
class ArrayDataset:
    """Preprocessed images ``x`` (N, h, w) float16 in [0, 2] and labels ``y`` (N,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, mininterval=2.0)


def phantom_arrays(seeds: Iterable[int], input_size: Sequence[int], *, shape: tuple[int, int] = TRAIN_PHANTOM_SHAPE,
                   progress: bool = False, desc: str = "phantoms") -> ArrayDataset:
    """Generate and preprocess the phantoms for ``seeds`` (laterality from the phantom, as in use)."""
    seeds = list(seeds)
    xs = np.empty((len(seeds), int(input_size[0]), int(input_size[1])), dtype=np.float16)
    ys = np.empty(len(seeds), dtype=np.int64)
    for i, s in enumerate(_progress(seeds, len(seeds), desc, progress)):
        ph = generate_phantom(int(s), shape=shape)
        x, _ = preprocess_array(ph.image, ph.laterality, input_size)
        xs[i] = x
        ys[i] = ph.label
    return ArrayDataset(xs, ys)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light, label-preserving augmentation of a (B, 1, h, w) batch in [0, 2] (before mean/std)."""
    b = x.shape[0]
    gamma = torch.exp(torch.empty(b, 1, 1, 1).uniform_(-0.25, 0.25, generator=gen))
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.85, 1.15, generator=gen)
    x = (x.clamp(min=0) ** gamma) * contrast
    x = x + 0.02 * torch.randn(x.shape, generator=gen)
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    shifts = torch.randint(-h // 16, h // 16 + 1, (b, 2), generator=gen)
    for i in range(b):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def _to_input(xb: np.ndarray | torch.Tensor, metadata: ModelMetadata) -> torch.Tensor:
    x = torch.as_tensor(xb).float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    mean = torch.tensor(metadata.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(metadata.std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x - mean) / std
    if metadata.in_chans == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def predict_arrays(module: nn.Module, metadata: ModelMetadata, data: ArrayDataset, device: torch.device,
                   batch_size: int = 64) -> np.ndarray:
    """Positive-class probabilities for every cached image."""
    module.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            x = _to_input(data.x[i:i + batch_size], metadata).to(device)
            out.append(torch.softmax(module(x).float(), dim=-1)[:, metadata.positive_index].cpu().numpy())
    return np.concatenate(out) if out else np.empty(0)


@dataclass
class TrainResult:
    """What :func:`train_classifier` produced."""

    checkpoint: Path
    metadata: ModelMetadata
    val_auc: float | None
    seconds: float
    history: list[dict[str, float]]


def train_classifier(train: ArrayDataset, val: ArrayDataset | None, *, architecture: str, out: str | Path,
                     input_size: Sequence[int], epochs: int = 4, batch_size: int = 32, lr: float = 1e-3,
                     weight_decay: float = 0.05, seed: int = 0, model_kwargs: dict[str, Any] | None = None,
                     device: str = "auto", description: str = "", intended_use: str = DEMO_INTENDED_USE,
                     trained_on: str = "", version: str = "0.1.0", half: bool = False,
                     extra_training: dict[str, Any] | None = None, progress: bool = True,
                     warmup_fraction: float = 0.05, label_smoothing: float = 0.0,
                     on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                     explainer_params: dict[str, dict[str, Any]] | None = None) -> TrainResult:
    """Train ``architecture`` (timm, from scratch) on cached arrays and save a checkpoint + sidecar at ``out``.

    The mean/std stored in the metadata are measured on the training images.
    Returns the checkpoint path, metadata, validation AUC (None without a
    usable validation set), wall seconds and per-epoch history.
    """
    t0 = time.perf_counter()
    if len(train) == 0:
        raise TrainingError("no training images")
    seed_everything(seed)
    torch_device = select_device(device)
    sample = train.x[:: max(1, len(train) // 256)].astype(np.float32)
    mean, std = float(sample.mean()), float(sample.std()) or 1.0
    metadata = ModelMetadata(
        architecture=architecture, input_size=tuple(int(v) for v in input_size), in_chans=1,
        mean=(round(mean, 5),), std=(round(std, 5),), model_kwargs=dict(model_kwargs or {}),
        version=version, description=description, intended_use=intended_use, trained_on=trained_on,
        explainer_params=dict(explainer_params or {}))
    module = create_module(metadata).to(torch_device)
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warmup = max(1, int(warmup_fraction * total))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    val_auc: float | None = None
    can_validate = val is not None and len(val) > 0 and 0 < int(val.y.sum()) < len(val)
    for epoch in range(epochs):
        module.train()
        order = torch.randperm(len(train), generator=gen).numpy()
        running, seen = 0.0, 0
        bar = _progress(range(steps_per_epoch), steps_per_epoch, f"epoch {epoch + 1}/{epochs}", progress)
        for step in bar:
            idx = np.sort(order[step * batch_size:(step + 1) * batch_size])
            xb = _augment(torch.from_numpy(train.x[idx].astype(np.float32)).unsqueeze(1), gen)
            x = _to_input(xb, metadata).to(torch_device)
            y = torch.from_numpy(train.y[idx]).to(torch_device)
            loss = loss_fn(module(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{running / seen:.3f}")
        record = {"epoch": epoch + 1, "train_loss": round(running / max(seen, 1), 4)}
        if can_validate and val is not None:
            val_auc = roc_auc(val.y, predict_arrays(module, metadata, val, torch_device))
            record["val_auc"] = round(val_auc, 4)
        history.append(record)
        log.info("epoch %d/%d: %s", epoch + 1, epochs, record)
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k}={v}" for k, v in record.items() if k != "epoch"),
                  flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    seconds = time.perf_counter() - t0
    metadata.training = {
        "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "optimizer": "AdamW", "schedule": f"linear warm-up {warmup} steps, cosine",
        "train_images": len(train), "val_images": 0 if val is None else len(val),
        "val_auc": None if val_auc is None else round(val_auc, 4), "seconds": round(seconds, 1),
        "device": str(torch_device), "torch": torch.__version__, "history": history,
        **(extra_training or {}),
    }
    path = save_checkpoint(module.cpu(), metadata, out, half=half)
    return TrainResult(checkpoint=path, metadata=metadata, val_auc=val_auc, seconds=seconds, history=history)


def validate_on_phantoms(classifier: Classifier, n: int = 400, start: int = VALIDATION_SEED_BASE, *,
                         shape: tuple[int, int] = TRAIN_PHANTOM_SHAPE, progress: bool = False) -> tuple[float, float]:
    """(AUC, accuracy at 0.5) of ``classifier`` on ``n`` phantoms from seed ``start``, via its own preprocessing."""
    labels, scores = [], []
    for s in _progress(range(start, start + n), n, "validate", progress):
        ph = generate_phantom(s, shape=shape)
        x, _ = classifier.preprocess(ph.image, ph.laterality)
        scores.append(float(classifier.predict_proba(x)[0, classifier.positive_index]))
        labels.append(ph.label)
    labels_arr, scores_arr = np.asarray(labels), np.asarray(scores)
    return roc_auc(labels_arr, scores_arr), float(((scores_arr >= 0.5) == labels_arr.astype(bool)).mean())
