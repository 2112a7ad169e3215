"""Models layer: phantoms, preprocessing with exact geometry, timm classifiers, training.

``mammoxai.models.phantoms`` and ``mammoxai.models.preprocess.Geometry`` are
torch-free. The torch-heavy names below are imported lazily on first use, so
``from mammoxai.models.phantoms import generate_phantom`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "Phantom": "phantoms",
    "generate_phantom": "phantoms",
    "phantom_dataset": "phantoms",
    "FINDINGS": "phantoms",
    "Geometry": "preprocess",
    "PreprocessError": "preprocess",
    "preprocess": "preprocess",
    "Classifier": "classifier",
    "ModelLoadError": "classifier",
    "ModelMetadata": "classifier",
    "load_classifier": "classifier",
    "demo_checkpoint": "classifier",
    "save_checkpoint": "classifier",
    "load_png": "png",
    "ImageLoadError": "png",
    "select_device": "device",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mammoxai.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
